"""Code must not run from files that look like data: a checkpoint's stored architecture, a replayed
config.json, a card naming any importable callable. Architectures come only from registered names,
model libraries (timm:create_model, torchvision.models:*, monai.networks.nets:*) and file.py:factory
inside the card's folder; anything else needs EDGESHRINK_ALLOW_CODE=1. A card's code that calls
sys.exit / os._exit or raises KeyboardInterrupt is a one-line error, never a silent exit 0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_CARD
from tests.hostile.conftest import assert_error_line, assert_refused, cli, leftovers
from toolkit.core.errors import EdgeShrinkError


@pytest.fixture
def marker(tmp_path):
    """A file only `os:system` / `subprocess:getoutput` with the card's command would create."""
    return tmp_path / "pwned"


def _evil_checkpoint(henv, path: Path, marker: Path) -> Path:
    """The tiny card's own weights, but the file names `os:system` with a command as its architecture."""
    import torch

    payload = torch.load(Path(henv["EDGESHRINK_MODELS_DIR"]) / "tiny_mnv3.pt", weights_only=True)
    payload["architecture"] = "os:system"
    payload["arguments"] = {"command": f"touch {marker}"}
    torch.save(payload, path)
    return path


def _card(tmp_path, henv, **changes) -> Path:
    """A card file in its own folder (the tiny card, its weights copied beside it) with `changes`."""
    folder = tmp_path / "card"
    folder.mkdir(exist_ok=True)
    shutil.copy(Path(henv["EDGESHRINK_MODELS_DIR"]) / "tiny_mnv3.pt", folder / "weights.pt")
    card = dict(TINY_CARD, checkpoint={"path": "weights.pt"}, **changes)
    (folder / "card.yaml").write_text(yaml.safe_dump(card))
    return folder / "card.yaml"


# ---- a checkpoint never chooses the code: bench, sparsity, run ---------------------------------

def _torch_bundle(tmp_path, weights: Path, config: dict | None = None) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(weights, bundle / "m_dense.pt")
    manifest = {"model": "tiny_mnv3", "target": "tiny", "input": {"channels": 3, "height": 64, "width": 64},
                "baseline": {"file": "m_dense.pt"},
                "artifacts": [{"name": "dense-torch-fp32", "file": "m_dense.pt", "format": "torch", "precision": "fp32",
                               "stage": "dense", "metrics": {}, "size_bytes": (bundle / "m_dense.pt").stat().st_size}]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    if config is not None:
        (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def test_bench_never_imports_the_architecture_a_checkpoint_names(henv, tmp_path, marker):
    bundle = _torch_bundle(tmp_path, _evil_checkpoint(henv, tmp_path / "evil.pt", marker))
    proc = cli("bench", bundle, "--min-runs", "1", "--min-seconds", "0")
    assert_refused(proc, "os:system", "never imports code")
    assert not marker.exists()
    assert not (bundle / "bench.json").exists()


@pytest.mark.parametrize("card_architecture", ["mobilenet_v3_small", "os:system"])
def test_bench_with_a_config_json_never_imports_what_the_checkpoint_names(henv, tmp_path, marker, card_architecture):
    """The bundle's config.json card names the architecture (checked like a plan); the .pt's differs."""
    config = {"card": dict(TINY_CARD, architecture=card_architecture, arguments={"command": f"touch {marker}"}),
              "card_dir": str(tmp_path)}
    bundle = _torch_bundle(tmp_path, _evil_checkpoint(henv, tmp_path / "evil.pt", marker), config)
    proc = cli("bench", bundle, "--min-runs", "1", "--min-seconds", "0")
    assert_refused(proc, "os:system")
    assert not marker.exists()
    assert not (bundle / "bench.json").exists()


def test_sparsity_builds_the_cards_architecture_not_the_checkpoints(henv, tmp_path, marker, monkeypatch):
    evil = _evil_checkpoint(henv, tmp_path / "evil.pt", marker)
    monkeypatch.setenv("EDGESHRINK_DATA_DIR", str(tmp_path / "no-data"))  # stops the study after the model is loaded
    out = tmp_path / "sparsity"
    proc = cli("sparsity", "--model", "tiny_mnv3", "--sparsity", "0.5", "--checkpoint", evil, "--out", out)
    assert_refused(proc, "does not exist")  # the data folder: the model itself loaded as the card's mobilenet
    assert not marker.exists()
    assert not out.exists()


def test_load_checkpoint_takes_the_cards_architecture_and_refuses_the_files(henv, tmp_path, marker):
    import torch.nn as nn

    from toolkit.models.checkpoint import load_checkpoint
    from toolkit.models.weights import ModelSource

    evil = _evil_checkpoint(henv, tmp_path / "evil.pt", marker)
    with pytest.raises(EdgeShrinkError) as exc:
        load_checkpoint(evil)
    assert_error_line(exc, "os:system", "never imports code", "--model")
    model, _ = load_checkpoint(evil, source=ModelSource("mobilenet_v3_small", TINY_CARD["arguments"]))
    assert isinstance(model, nn.Module)
    assert not marker.exists()


def test_run_with_a_checkpoint_naming_os_system_builds_the_card(henv, tmp_path, marker, monkeypatch):
    evil = _evil_checkpoint(henv, tmp_path / "evil.pt", marker)
    monkeypatch.setenv("EDGESHRINK_DATA_DIR", str(tmp_path / "no-data"))  # the run stops at the data, after the model
    proc = cli("run", "--model", "tiny_mnv3", "--target", "tiny", "--checkpoint", evil, "--quiet", "--no-bench",
               "--out", tmp_path / "out")
    assert_refused(proc, "does not exist")
    assert not marker.exists()
    assert not leftovers(tmp_path / "out") and not (tmp_path / "out" / "tiny_mnv3-tiny").exists()


# ---- cards: only the safe forms -----------------------------------------------------------------

CALLABLES = ["os:system", "subprocess:getoutput", "builtins:exec", "toolkit.cli:main", "posix:system",
             "torchvision.io:write_file", "torchvision.models._api:get_model", "torch.hub:load"]


@pytest.mark.parametrize("architecture", CALLABLES)
def test_card_naming_a_non_model_callable_is_refused_before_import(henv, tmp_path, marker, architecture):
    card = _card(tmp_path, henv, architecture=architecture, arguments={"command": f"touch {marker}", "cmd": f"touch {marker}"})
    proc = cli("run", "--model", card, "--target", "tiny", "--synthetic-data", "--quiet", "--out", tmp_path / "out")
    assert_refused(proc, architecture, "EDGESHRINK_ALLOW_CODE=1")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("where", ["absolute", "dotdot", "home"])
def test_card_code_outside_the_cards_folder_is_refused(henv, tmp_path, marker, where):
    evil = tmp_path / "elsewhere" / "evil.py"
    evil.parent.mkdir()
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\ndef build(**k):\n    return None\n")
    spec = {"absolute": f"{evil}:build", "dotdot": "../elsewhere/evil.py:build", "home": "~/evil.py:build"}[where]
    card = _card(tmp_path, henv, architecture=spec)
    proc = cli("run", "--model", card, "--target", "tiny", "--synthetic-data", "--quiet", "--out", tmp_path / "out")
    assert_refused(proc, "card's folder", "EDGESHRINK_ALLOW_CODE=1")
    assert not marker.exists()


def test_explicit_opt_in_builds_code_outside_the_safe_forms(tmp_path, monkeypatch):
    from toolkit.models.architectures import ALLOW_CODE_ENV, build_model

    code = tmp_path / "nets.py"
    code.write_text("import torch.nn as nn\ndef build(n=3):\n    return nn.Linear(n, 2)\n")
    monkeypatch.delenv(ALLOW_CODE_ENV, raising=False)
    with pytest.raises(EdgeShrinkError) as exc:
        build_model(f"{code}:build", {"n": 4})
    assert_error_line(exc, "absolute path", "EDGESHRINK_ALLOW_CODE=1")
    monkeypatch.setenv(ALLOW_CODE_ENV, "1")
    assert build_model(f"{code}:build", {"n": 4}).in_features == 4


def test_model_library_factories_and_registered_names_still_build(tmp_path):
    from toolkit.models.architectures import build_model

    assert type(build_model("torchvision.models:resnet18", {"num_classes": 3})).__name__ == "ResNet"
    assert type(build_model("torchvision.models:MobileNetV2", {"num_classes": 3})).__name__ == "MobileNetV2"
    assert type(build_model("mobilenet_v3_small", {"num_classes": 3})).__name__ == "MobileNetV3"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nets.py").write_text("import torch.nn as nn\ndef build():\n    return nn.Linear(2, 2)\n")
    assert type(build_model("sub/nets.py:build", {}, tmp_path)).__name__ == "Linear"  # beside the card, in a sub-folder


# ---- replayed config.json -----------------------------------------------------------------------

@pytest.fixture
def plan_json(henv, tmp_path):
    import toolkit

    weights = tmp_path / "weights.pt"
    shutil.copy(f"{henv['EDGESHRINK_MODELS_DIR']}/tiny_mnv3.pt", weights)
    plan = toolkit.plan("tiny_mnv3", target="tiny", checkpoint=str(weights), synthetic_data=True, bench=False,
                        out=str(tmp_path / "out"))
    return plan.to_json()


def _replay(tmp_path, data):
    (tmp_path / "config.json").write_text(json.dumps(data))
    return cli("run", "--plan", tmp_path / "config.json", "--quiet")


@pytest.mark.parametrize("how", ["card-and-source", "absolute-py"])
def test_replayed_plan_naming_other_code_is_refused(plan_json, tmp_path, marker, how):
    evil = tmp_path / "evil.py"
    evil.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\ndef build(**k):\n    return None\n")
    architecture = "os:system" if how == "card-and-source" else f"{evil}:build"
    arguments = {"command": f"touch {marker}"}
    data = dict(plan_json, card=dict(plan_json["card"], architecture=architecture, arguments=arguments),
                source=dict(plan_json["source"], architecture=architecture, arguments=arguments))
    assert_refused(_replay(tmp_path, data), "EDGESHRINK_ALLOW_CODE=1")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_replayed_plan_whose_source_is_not_its_card_is_refused(plan_json, tmp_path, marker):
    data = dict(plan_json, source=dict(plan_json["source"], architecture="evil.py:build", base_dir=str(tmp_path)))
    (tmp_path / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    assert_refused(_replay(tmp_path, data), "is not its card's")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


# ---- a card's code ending the process -----------------------------------------------------------

ENDINGS = {
    "sys.exit-at-import": "import sys\nsys.exit(0)\n",
    "os._exit-at-import": "import os\nos._exit(0)\n",
    "sys.exit-in-factory": "import sys\ndef build(**k):\n    sys.exit(0)\n",
    "os._exit-in-factory": "import os\ndef build(**k):\n    os._exit(0)\n",
    "KeyboardInterrupt-in-factory": "def build(**k):\n    raise KeyboardInterrupt\n",
    "KeyboardInterrupt-at-import": "raise KeyboardInterrupt('from the card')\n",
}
WORDS = {"sys.exit": "sys.exit(0)", "os._exit": "os._exit(0)", "KeyboardInterrupt": "raised KeyboardInterrupt"}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_card_code_ending_the_process_is_a_one_line_error(henv, tmp_path, ending):
    card = _card(tmp_path, henv, architecture="nets.py:build")
    (card.parent / "nets.py").write_text(ENDINGS[ending])
    proc = cli("run", "--model", card, "--target", "tiny", "--synthetic-data", "--quiet", "--out", tmp_path / "out")
    assert_refused(proc, "nets.py", WORDS[ending.split("-")[0]])
    assert "interrupted" not in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_guard_restores_os_exit_and_lets_forked_children_exit(tmp_path):
    import os

    from toolkit.models.architectures import user_code

    real = os._exit
    with pytest.raises(EdgeShrinkError):
        with user_code("test code"):
            pid = os.fork()
            if pid == 0:  # the child must really exit (not raise into the parent's code)
                os._exit(7)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 7
            os._exit(0)
    assert os._exit is real
