"""Output folders a run must not damage, and caches someone tampered with."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.hostile.conftest import assert_refused, cli, leftovers

RUN = ("run", "--model", "tiny_mnv3", "--target", "tiny", "--synthetic-data", "--quiet", "--no-bench",
       "--finetune-epochs", "0")


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "proc"])
def test_unusable_out_is_refused_and_the_users_file_kept(henv, tmp_path, where):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    out = {"a-file": user_file, "under-a-file": user_file / "dist", "proc": "/proc/edgeshrink-hostile"}[where]
    proc = cli(*RUN, "--out", out)
    assert_refused(proc, "--out")
    assert user_file.read_text() == "mine" and not leftovers(tmp_path)


def test_rerun_refuses_a_bundle_folder_holding_foreign_files(henv, tmp_path):
    bundle = tmp_path / "out" / "tiny_mnv3-tiny"
    bundle.mkdir(parents=True)
    (bundle / "thesis.docx").write_text("two years of work")
    proc = cli(*RUN, "--out", tmp_path / "out")
    assert_refused(proc, "thesis.docx", "--out")
    assert (bundle / "thesis.docx").read_text() == "two years of work" and not leftovers(tmp_path / "out")


def test_card_named_with_a_path_cannot_write_outside_out(henv, tmp_path):
    import yaml

    card = yaml.safe_load(open(f"{henv['EDGESHRINK_MODELS_DIR']}/tiny_mnv3.yaml"))
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "card.yaml").write_text(yaml.safe_dump(dict(card, name="../../escaped")))
    proc = cli(*RUN[:2], tmp_path / "deep" / "er" / "card.yaml", *RUN[3:], "--out", tmp_path / "deep" / "er" / "out")
    assert_refused(proc, "not allowed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]


def _fake_old_bundle(final):
    (final / "results").mkdir(parents=True)
    (final / "manifest.json").write_text(json.dumps({"artifacts": [{"file": "m.tflite", "name": "x"}]}))
    (final / "m.tflite").write_bytes(b"old model")
    (final / "results" / "pi.json").write_text('{"p50": 1.0}')
    (final / "bench.json").write_text("{}")


def test_rerun_keeps_device_results_and_bench_json(tmp_path):
    from toolkit.core.atomic import staged_folder

    final = tmp_path / "m-t"
    _fake_old_bundle(final)
    with staged_folder(final) as work:
        (work / "manifest.json").write_text(json.dumps({"artifacts": []}))
    assert (final / "results" / "pi.json").read_text() == '{"p50": 1.0}' and (final / "bench.json").is_file()
    assert not (final / "m.tflite").exists() and not leftovers(tmp_path)


def test_failed_rerun_leaves_the_old_bundle_untouched(tmp_path):
    from toolkit.core.atomic import staged_folder

    final = tmp_path / "m-t"
    _fake_old_bundle(final)
    with pytest.raises(KeyboardInterrupt), staged_folder(final) as work:
        (work / "half.onnx").write_bytes(b"half")
        raise KeyboardInterrupt
    assert (final / "m.tflite").read_bytes() == b"old model" and (final / "results" / "pi.json").is_file()
    assert not leftovers(tmp_path)


def test_stale_partial_of_a_dead_run_is_removed(tmp_path):
    from toolkit.core.atomic import staged_folder

    dead = tmp_path / ".m-t.partial-999999999"
    dead.mkdir()
    with staged_folder(tmp_path / "m-t") as work:
        (work / "manifest.json").write_text("{}")
    assert not dead.exists() and (tmp_path / "m-t" / "manifest.json").is_file()


def test_tampered_pruned_cache_entry_is_detected_and_not_used(henv, capsys):
    from tests.conftest import TINY_CARD
    from toolkit.config.cards import load_card
    from toolkit.prune.cache import _path, find_pruned, store_pruned
    from toolkit.models.weights import ModelSource

    source = ModelSource("mobilenet_v3_small", TINY_CARD["arguments"])
    store_pruned("k" * 32, source.build().eval(), source, [{"macs": 1}])
    entry = _path("k" * 32)
    assert find_pruned(load_card("tiny_mnv3"), "k" * 32, source=source) is not None
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    assert find_pruned(load_card("tiny_mnv3"), "k" * 32, source=source) is None
    assert "failed its sha256 check" in capsys.readouterr().out and not entry.exists()


def test_truncated_decoded_image_cache_is_decoded_again(tmp_path, henv):
    from PIL import Image

    from toolkit.data.imagefolder import load_image_split
    from toolkit.core.paths import cache_dir

    (tmp_path / "train" / "cat").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (20, 20), (40 * i, 10, 10)).save(tmp_path / "train" / "cat" / f"{i}.png")
    first = load_image_split(tmp_path, "train", 16, 16, progress=False)
    for npy in cache_dir().glob("images-train-*/images.npy"):
        npy.write_bytes(npy.read_bytes()[:90])
    again = load_image_split(tmp_path, "train", 16, 16, progress=False)
    assert np.array_equal(first.images, again.images)


def test_tampered_tflite_cache_entry_is_not_shipped(tmp_path, henv):
    import torch

    from toolkit.convert.cache import _key, cached_onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.core.paths import cache_dir

    onnx = torch_to_onnx(torch.nn.Conv2d(3, 4, 3).eval(), (1, 3, 16, 16), tmp_path / "m.onnx")
    entry = cache_dir() / "tflite" / _key(onnx, None, (0.0,), (1.0,), int8=False, io_dtype="int8")
    entry.mkdir(parents=True)
    (entry / "float32.tflite").write_bytes(b"TFL3 not the model you converted")
    out = cached_onnx_to_tflite(onnx, tmp_path / "conv", None, (0.0,), (1.0,), int8=False)
    assert out.float32.read_bytes() != b"TFL3 not the model you converted"
