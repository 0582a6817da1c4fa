"""Bad command-line arguments to every subcommand: one line, exit 2, nothing written, nothing run."""

from __future__ import annotations

import pytest

from tests.hostile.conftest import assert_refused, cli

RUN = ("run", "--model", "tiny_mnv3", "--target", "tiny", "--synthetic-data", "--quiet")

BAD_NUMBERS = [
    (RUN + ("--seed", "-1"), "--seed"),
    (RUN + ("--seed", "4294967296"), "--seed"),
    (RUN + ("--seed", "1e3"), "--seed"),
    (RUN + ("--finetune-epochs", "-3"), "--finetune-epochs"),
    (RUN + ("--finetune-epochs", "two"), "--finetune-epochs"),
    (RUN + ("--calibration-size", "0"), "--calibration-size"),
    (RUN + ("--calibration-size", "-7"), "--calibration-size"),
    (RUN + ("--train-threads", "0"), "--train-threads"),
    (("train", "--model", "tiny_mnv3", "--epochs", "-1"), "--epochs"),
    (("train", "--model", "tiny_mnv3", "--batch-size", "0"), "--batch-size"),
    (("train", "--model", "tiny_mnv3", "--lr", "nan"), "--lr"),
    (("train", "--model", "tiny_mnv3", "--lr", "-0.1"), "--lr"),
    (("train", "--model", "tiny_mnv3", "--lr", "inf"), "--lr"),
    (("train", "--model", "tiny_mnv3", "--seed", "-1"), "--seed"),
    (("train", "--model", "tiny_mnv3", "--threads", "-2"), "--threads"),
    (("train", "--model", "tiny_mnv3", "--label-smoothing", "2"), "--label-smoothing"),
    (("train", "--model", "tiny_mnv3", "--warmup-epochs", "-1"), "--warmup-epochs"),
    (("train", "--model", "tiny_mnv3", "--weight-decay", "nan"), "--weight-decay"),
    (("train", "--model", "tiny_mnv3", "--optimizer", "adam"), "--optimizer"),
    (("sweep", "--model", "tiny_mnv3", "--repeats", "0"), "--repeats"),
    (("sweep", "--model", "tiny_mnv3", "--finetune-epochs", "-1"), "--finetune-epochs"),
    (("sweep", "--model", "tiny_mnv3", "--seed", "-5"), "--seed"),
    (("bench", "dist/x", "--threads", "0"), "--threads"),
    (("bench", "dist/x", "--min-runs", "-1"), "--min-runs"),
    (("bench", "dist/x", "--min-seconds", "inf"), "--min-seconds"),
    (("bench", "dist/x", "--min-seconds", "-2"), "--min-seconds"),
    (RUN + ("--tflite-converter", "tflite_convert; rm -rf ~"), "--tflite-converter"),
    (("zoo", "--models", "resnet18", "--cnn-prune-budget", "soon"), "--cnn-prune-budget"),
    (("bogus-command",), "invalid choice"),
    (("run", "--no-such-flag"), "unrecognized"),
    (("compare",), "bundles"),
    (("eval-pack",), "--model"),
]


@pytest.mark.parametrize("args, names", BAD_NUMBERS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_bad_number_or_flag_is_one_line(henv, tmp_path, args, names):
    out = ("--out", tmp_path / "out") if args[0] in ("run", "train", "sweep") else ()
    assert_refused(cli(*args, *out), names)
    assert not (tmp_path / "out").exists()


HOSTILE_NAMES = ["../../x", "a;rm -rf ~", "$(touch {marker})", "my model", "modèle", "ünïcode名", "", "x" * 300,
                 "/etc/passwd", "-rf"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_model_name_is_refused_and_never_executed(henv, tmp_path, name):
    marker = tmp_path / "pwned"
    proc = cli("run", f"--model={name.format(marker=marker)}", "--target", "tiny", "--out", tmp_path / "out")
    assert_refused(proc)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../../x", "../targets/tiny", "a;b", "$(touch {marker})", "tïny", "", "tinyy"],
                         ids=range(7))
def test_hostile_target_name_is_refused(henv, tmp_path, name):
    marker = tmp_path / "pwned"
    proc = cli("run", "--model", "tiny_mnv3", f"--target={name.format(marker=marker)}", "--out", tmp_path / "out")
    assert_refused(proc, "target")
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    (("train", "--model", "../../x", "--synthetic-data"), ["does not exist"]),
    (("sweep", "--model", "tiny_mnv3", "--target", "../x"), ["unknown target"]),
    (("sweep", "--model", "tiny_mnv3", "--macs", "abc"), ["--macs"]),
    (("sweep", "--model", "tiny_mnv3", "--macs", "2.0", "--synthetic-data"), ["target_macs"]),
    (("sweep", "--model", "tiny_mnv3", "--scopes", "sideways", "--synthetic-data"), ["scope"]),
    (("eval-pack", "--model", "a;b"), ["not allowed"]),
    (("publish",), ["--bundle"]),
    (("publish", "--model", "../../x", "--run", "."), ["does not exist"]),
    (("publish", "--model", "tiny_mnv3", "--run", "/nonexistent"), ["last.pt"]),
    (("validate", "/nonexistent/profile.yaml"), ["cannot read"]),
    (("run", "--model", "tiny_mnv3", "--plan", "x.json"), ["not both"]),
    (("run",), ["--model"]),
    (("run", "--model", "tiny_mnv3", "--target", "tiny", "--host", "no host here"), ["HOST"]),
    (("run", "--model", "tiny_mnv3", "--target", "tiny", "--checkpoint", "/nonexistent.pt"), ["does not exist"]),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_other_subcommand_misuse_is_one_line(henv, tmp_path, args, words):
    assert_refused(cli(*args), *words)


@pytest.mark.parametrize("out, words", [("{tmp}", "not a folder"), ("{tmp}/pack", ".npz"),
                                        ("{tmp}/notes.txt/pack.npz", "cannot write")], ids=["folder", "no-suffix", "under-a-file"])
def test_eval_pack_out_must_be_a_writable_npz(henv, tmp_path, out, words):
    (tmp_path / "notes.txt").write_text("mine")
    proc = cli("eval-pack", "--model", "tiny_mnv3", "--synthetic-data", "--out", out.format(tmp=tmp_path))
    assert_refused(proc, words)
    assert (tmp_path / "notes.txt").read_text() == "mine" and not list(tmp_path.glob("*.npz"))


@pytest.mark.parametrize("out", ["{tmp}/notes.txt", "{tmp}/notes.txt/run", "/proc/edgeshrink-hostile"], ids=["file", "under-file", "proc"])
def test_train_out_must_be_a_writable_folder(henv, tmp_path, out):
    (tmp_path / "notes.txt").write_text("mine")
    proc = cli("train", "--model", "tiny_mnv3", "--synthetic-data", "--epochs", "0", "--out", out.format(tmp=tmp_path))
    assert_refused(proc, "--out")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_deliver_refuses_a_missing_bundle_before_connecting(henv, tmp_path):
    assert_refused(cli("deliver", tmp_path / "missing", "--host", "user@127.0.0.1:1"), "manifest.json")
