"""Weights files that are empty, random, malicious, of another model, incomplete or nested wrongly:
refused in one line at planning, before any data is read; nothing in them is ever executed."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.conftest import TINY_CARD
from tests.hostile.conftest import assert_error_line, assert_refused, cli
from toolkit.core.errors import EdgeShrinkError


class _Payload:
    """Pickled, this object would run `touch <marker>` when loaded with weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny_state_dict():
    from toolkit.models.architectures import create_model

    return create_model("mobilenet_v3_small", **TINY_CARD["arguments"]).state_dict()


def _write(path, kind, marker):
    import torch

    if kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind == "random-bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "pickle-with-code":
        torch.save({"state_dict": _Payload(marker)}, path)
    elif kind == "other-architecture":
        from toolkit.models.architectures import create_model

        torch.save(create_model("resnet18", num_classes=4).state_dict(), path)
    elif kind == "missing-key":
        sd = _tiny_state_dict()
        sd.pop(next(iter(sd)))
        torch.save(sd, path)
    elif kind == "wrong-shape":
        sd = _tiny_state_dict()
        sd["classifier.3.weight"] = torch.zeros(9, sd["classifier.3.weight"].shape[1])
        torch.save(sd, path)
    elif kind == "two-nested-state-dicts":  # a lone nested one ({"model": ...}) is found automatically
        torch.save({"first": _tiny_state_dict(), "second": _tiny_state_dict()}, path)
    elif kind == "not-a-dict":
        torch.save([1, 2, 3], path)
    elif kind == "text-file":
        path.write_text("these are my weights\n")


CASES = {"zero-bytes": "unreadable", "random-bytes": "unreadable", "pickle-with-code": "unreadable",
         "other-architecture": "does not fit", "missing-key": "is missing", "wrong-shape": "(9,",
         "two-nested-state-dicts": "several state_dicts", "not-a-dict": "not a state_dict", "text-file": "unreadable"}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_weights_refused_at_planning(tmp_path, henv, kind):
    import toolkit

    marker = tmp_path / "pwned"
    _write(tmp_path / "w.pt", kind, marker)
    card = dict(TINY_CARD, checkpoint={"path": "w.pt"})
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(EdgeShrinkError) as exc:
        toolkit.plan(str(tmp_path / "card.yaml"), target="tiny", data=str(tmp_path / "no-data-needed"))
    assert_error_line(exc, "w.pt", CASES[kind])
    assert not marker.exists(), "loading the checkpoint executed code"


def test_malicious_checkpoint_through_the_cli_runs_nothing(tmp_path, henv):
    marker = tmp_path / "pwned"
    _write(tmp_path / "evil.pt", "pickle-with-code", marker)
    proc = cli("run", "--model", "tiny_mnv3", "--target", "tiny", "--checkpoint", tmp_path / "evil.pt",
               "--synthetic-data", "--out", tmp_path / "out")
    assert_refused(proc, "evil.pt", "weights-only")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_card_checkpoint_changed_since_its_sha256_is_refused(tmp_path, henv):
    import toolkit
    from toolkit.models.checkpoint import sha256_file

    _write(tmp_path / "w.pt", "missing-key", None)
    card = dict(TINY_CARD, checkpoint={"path": "w.pt", "sha256": sha256_file(tmp_path / "w.pt")})
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    (tmp_path / "w.pt").write_bytes((tmp_path / "w.pt").read_bytes() + b"\0")
    with pytest.raises(EdgeShrinkError) as exc:
        toolkit.plan(str(tmp_path / "card.yaml"), target="tiny", synthetic_data=True)
    assert_error_line(exc, "does not match the sha256")
