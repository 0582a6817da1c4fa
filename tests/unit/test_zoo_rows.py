"""The deploy zoo's rows: which converter's files a row deploys when both verify (the fewer INT8
XNNPACK partitions, as a run does), and rows free of this machine's folders (committed, resumed
on another machine)."""

from __future__ import annotations

from pathlib import Path

from toolkit.studies import deploy_zoo


def _sub(converter: str, *, verified: bool, int8: int, parity: str = "ok") -> dict:
    stages = {"parity": {"status": parity, "message": "max relative error 1e-06", "seconds": 0.1},
              "int8": {"status": "ok" if verified else "skipped", "message": "", "seconds": 0.1},
              "partitions": {"status": "ok", "message": "", "seconds": 0.1}}
    return {"converter": converter, "stages": stages, "partitions": {"fp32": 1, "int8": int8}, "verified": verified}


def _finish(monkeypatch, subs: dict) -> dict:
    monkeypatch.setattr(deploy_zoo, "_verify", lambda state, converter: subs[converter])
    row = {"stages": {}}
    deploy_zoo._finish({"files": dict.fromkeys(subs)}, row)
    return row


def test_fewer_int8_partitions_is_deployed(monkeypatch):
    row = _finish(monkeypatch, {"onnx2tf": _sub("onnx2tf", verified=True, int8=10),
                                "litert-torch": _sub("litert-torch", verified=True, int8=1)})
    assert row["converter"] == "litert-torch" and row["partitions"]["int8"] == 1 and row["bundle"]
    assert "onnx2tf ran its INT8 file in 10 XNNPACK partitions, litert-torch in 1" in row["stages"]["parity"]["message"]


def test_tie_keeps_the_first_and_unverified_files_are_not_chosen(monkeypatch):
    tie = _finish(monkeypatch, {"onnx2tf": _sub("onnx2tf", verified=True, int8=2),
                                "litert-torch": _sub("litert-torch", verified=True, int8=2)})
    assert tie["converter"] == "onnx2tf" and "after" not in tie["stages"]["parity"]["message"]
    split = _finish(monkeypatch, {"onnx2tf": _sub("onnx2tf", verified=True, int8=7),
                                  "litert-torch": _sub("litert-torch", verified=False, int8=1, parity="failed")})
    assert split["converter"] == "onnx2tf" and split["bundle"]


def test_rows_hold_no_machine_folder(tmp_path):
    work = tmp_path / "edgeshrink-zoo-x"
    row = {"stages": {"onnx2tf": {"message": f"failed: {work}/model.onnx; see {Path.home()}/log and {Path.cwd()}/a"}},
           "list": [str(work)], "n": 3}
    clean = deploy_zoo._path_free(row, work=work)
    assert clean["stages"]["onnx2tf"]["message"] == "failed: <work>/model.onnx; see ~/log and ./a"
    assert clean["list"] == ["<work>"] and clean["n"] == 3


def test_ran_with_names_the_commit_and_libraries():
    ran = deploy_zoo._ran_with()
    assert ran["commit"] and ran["torch"] and ran["timm"]
