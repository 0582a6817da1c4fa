"""The Pi script from a produced bundle on aarch64: Debian bookworm arm64's Python 3.11 under
qemu-user (no binfmt, chroot or mounts) with the device requirements' aarch64 wheels. Timings
under emulation mean nothing (the script says so); accuracy on the eval pack must equal the
manifest's, with XNNPACK applied. The root and wheels are built once by tests/aarch64_setup.sh."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_device_pins_are_the_emulated_ones(profile_bundles):
    setup = (REPO / "tests" / "aarch64_setup.sh").read_text()
    pins = setup.split('WHEELS="', 1)[1].split('"', 1)[0].split()
    reqs = (profile_bundles["rpi4"] / "requirements-device.txt").read_text().splitlines()
    assert sorted(l for l in reqs if "==" in l and not l.startswith("#")) == sorted(pins)


def test_pi_script_on_emulated_aarch64_matches_manifest(profile_bundles, aarch64_env, use_workspace, tmp_path):
    from toolkit.pipeline.device_files import write_eval_pack
    from toolkit.config.cards import load_card
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task

    qemu, env = aarch64_env
    bundle = tmp_path / "tiny_mnv3-rpi4"
    shutil.copytree(profile_bundles["rpi4"], bundle)
    card = load_card("tiny_mnv3")
    pack = write_eval_pack(load_task(card, card_input_spec(card), DataRef(None, True), False), tmp_path / "heldout.npz")
    out = tmp_path / "r.json"
    t0 = time.perf_counter()
    proc = subprocess.run([*qemu, str(bundle / "edgeshrink_run.py"), "--bench", "--runs", "3", "--seconds", "0",
                           "--warmup", "1", "--eval-pack", str(pack), "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    deployed = next(a for a in manifest["artifacts"] if a["name"] == manifest["deploy"]["artifact"])
    print(f"\n[aarch64] {proc.stdout.strip()}\n[aarch64] top-1 {r['accuracy']['top1']:.4f} vs manifest "
          f"{deployed['metrics']['top1']:.4f}, XNNPACK applied: {r['runtime']['xnnpack_applied']}, {seconds:.1f} s")
    assert r["device"]["arch"] == "aarch64" and r["device"]["emulated_by"].startswith("qemu-aarch64")
    assert r["runtime"] == {**r["runtime"], "name": "ai-edge-litert", "version": "2.1.0", "xnnpack_applied": True}
    assert r["accuracy"]["top1"] == pytest.approx(deployed["metrics"]["top1"], abs=1e-9)
    assert r["sha256"] == deployed["sha256"] and r["latency_ms"]["p50"] > 0
    assert "say nothing about the real device" in r["timing_note"] and "emulated by qemu-aarch64" in proc.stdout
