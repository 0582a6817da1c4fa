"""Data-parallel training under real torchrun processes (gloo, CPU) and resumable training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import TINY_CARD

# dropout 0: dropout masks are per process, everything else is the same function for 1 and N
DP_CARD = dict(TINY_CARD, name="tiny_dp", arguments={"num_classes": 4, "width_mult": 0.5, "dropout": 0.0})
# SGD: Adam's per-weight normalisation turns float-rounding noise in near-zero gradients (biases of
# BatchNorms followed by another BatchNorm) into full-size steps, which hides what this test checks
ARGS = ["--epochs", "2", "--batch-size", "16", "--optimizer", "sgd", "--lr", "0.02", "--warmup-epochs", "0.5",
        "--seed", "3"]


@pytest.fixture
def dp_models(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny_dp.yaml").write_text(yaml.safe_dump(DP_CARD))
    monkeypatch.setenv("EDGESHRINK_MODELS_DIR", str(models))
    return models


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _train_in_process(out, *extra):
    from toolkit.cli import main

    torch.set_num_threads(1)
    assert main(["train", "--model", "tiny_dp", "--synthetic-data", "--out", str(out), *ARGS, *extra]) == 0


def test_two_torchrun_processes_match_one_process(dp_models, tmp_path):
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    run = subprocess.run([sys.executable, "-m", "toolkit", "train", "--model", "tiny_dp", "--synthetic-data",
                          "--nproc", "2", "--out", str(two), *ARGS], env=env, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    prov = json.loads((two / "provenance.json").read_text())
    assert prov["world_size"] == 2 and prov["backend"] == "gloo" and prov["per_process_batch"] == 8
    digests = prov["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks hold the same weights
    one = tmp_path / "one"
    _train_in_process(one)
    assert json.loads((one / "provenance.json").read_text())["world_size"] == 1
    w1, w2 = _weights(one / "last.pt"), _weights(two / "last.pt")
    assert w1.keys() == w2.keys()
    worst = max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1 if w1[k].is_floating_point())
    # each step matches to ~1e-5 (test below); 12 steps of SGD through BatchNorm grow that to ~1e-3
    assert worst < 1e-2, f"1 vs 2 processes differ by {worst}"
    h1 = json.loads((one / "history.json").read_text())["epochs"]
    h2 = json.loads((two / "history.json").read_text())["epochs"]
    assert all(abs(a["top1"] - b["top1"]) <= 1 / 32 for a, b in zip(h1, h2))  # within one of 32 eval images


ONE_STEP = """
import sys, torch
from toolkit.models.architectures import create_model
from toolkit.train import distributed as D
torch.set_num_threads(1)
ctx = D.init_from_env()
torch.manual_seed(0)
model = create_model("mobilenet_v3_small", num_classes=4, width_mult=0.5, dropout=0.0)
g = torch.Generator().manual_seed(1)
x, y = torch.randn(16, 3, 64, 64, generator=g), torch.randint(0, 4, (16,), generator=g)
net = D.wrap_model(model, ctx).train()
part = ctx.shard(16)
torch.nn.functional.cross_entropy(net(x[part]), y[part]).backward()
torch.save({"grads": {n: p.grad for n, p in model.named_parameters()}, "state": model.state_dict()},
           f"{sys.argv[1]}/rank{ctx.rank}-of-{ctx.world_size}.pt")
"""


def test_one_data_parallel_step_equals_the_full_batch_step(tmp_path):
    script = tmp_path / "one_step.py"
    script.write_text(ONE_STEP)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    for cmd in ([sys.executable, str(script), str(tmp_path)],
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script),
                 str(tmp_path)]):
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
    ref, r0, r1 = (torch.load(tmp_path / f, weights_only=True) for f in ("rank0-of-1.pt", "rank0-of-2.pt", "rank1-of-2.pt"))
    scale = max(float(g.abs().max()) for g in ref["grads"].values())
    for name, g in ref["grads"].items():
        assert torch.equal(r0["grads"][name], r1["grads"][name])  # all-reduced: the same on both ranks
        assert float((g - r0["grads"][name]).abs().max()) <= 1e-5 * scale, name  # averaged = full-batch gradient
    for name, b in ref["state"].items():  # BatchNorm running statistics over the global batch
        assert torch.allclose(b.float(), r0["state"][name].float(), atol=1e-6), name


def test_resume_after_interruption_gives_the_same_weights(dp_models, tmp_path):
    from toolkit.config.cards import load_card
    from toolkit.train.loop import TrainConfig
    from toolkit.pipeline.train_card import train_card

    torch.set_num_threads(1)
    card = load_card("tiny_dp")
    cfg = TrainConfig(epochs=2, batch_size=16, lr=5e-3, warmup_epochs=0.5, seed=3)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train_card(card, cfg, straight, synthetic=True, progress=False)
    partial = train_card(card, cfg, interrupted, synthetic=True, progress=False, max_epochs_this_session=1)
    assert partial["epochs_completed"] == 1
    assert torch.load(interrupted / "train_state.pt", weights_only=True)["epoch"] == 1
    resumed = train_card(card, cfg, interrupted, synthetic=True, progress=False, resume=True)
    assert resumed["epochs_completed"] == 2
    a, b = _weights(straight / "last.pt"), _weights(interrupted / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical to the uninterrupted run
    assert resumed["sha256"] != partial["sha256"]


def test_resume_refuses_a_state_from_another_config(dp_models, tmp_path):
    from toolkit.config.cards import load_card
    from toolkit.core.errors import EdgeShrinkError
    from toolkit.train.loop import TrainConfig
    from toolkit.pipeline.train_card import train_card

    torch.set_num_threads(1)
    card = load_card("tiny_dp")
    train_card(card, TrainConfig(epochs=2, batch_size=16, seed=3), tmp_path, synthetic=True, progress=False,
               max_epochs_this_session=1)
    with pytest.raises(EdgeShrinkError, match="another configuration"):
        train_card(card, TrainConfig(epochs=2, batch_size=16, seed=4), tmp_path, synthetic=True, progress=False)
    with pytest.raises(EdgeShrinkError, match="drop --resume"):
        train_card(card, TrainConfig(epochs=2, batch_size=16, seed=3), tmp_path / "empty", synthetic=True,
                   progress=False, resume=True)


def test_fit_keeps_the_old_positional_call_and_refuses_a_batch_nproc_does_not_divide():
    from toolkit.train.distributed import DistContext
    from toolkit.core.errors import EdgeShrinkError

    with pytest.raises(EdgeShrinkError, match="multiple of --nproc"):
        DistContext(rank=0, world_size=3).shard(16)
    assert DistContext(rank=1, world_size=2).shard(16) == slice(8, 16)
