"""Files that are not what they look like: YAML alias bombs, /dev/zero, FIFOs, folders and oversized
files where a card, profile, plan or checkpoint is expected; FIFOs, broken and looping links and
hidden files in an image folder; a decoder that never finishes; an unusable cache folder. Each is a
one-line refusal that comes at once (nothing hangs, nothing runs out of memory)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, TINY_CARD, TINY_TARGET
from tests.hostile.conftest import assert_error_line, assert_refused, cli
from toolkit.core.errors import EdgeShrinkError

# ---- YAML alias bombs ---------------------------------------------------------------------------


def _bomb(levels: int = 9) -> str:
    """A flow list whose later items alias earlier ones: a few hundred bytes, 9**9 items expanded."""
    items = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def test_alias_bomb_is_small():
    assert len(_bomb()) < 600


def test_validate_refuses_an_alias_bomb_in_a_profile_at_once(tmp_path):
    path = tmp_path / "tiny.yaml"
    text = yaml.safe_dump({k: v for k, v in TINY_TARGET.items() if k != "description"})
    path.write_text(text + f"description: {_bomb()}\n")
    start = time.monotonic()
    proc = cli("validate", path, timeout=60)
    assert_refused(proc, "tiny.yaml", "alias")
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("key", ["labels", "provenance", "arguments"])
def test_run_refuses_an_alias_bomb_in_a_card_at_once(henv, tmp_path, key):
    card = {k: v for k, v in TINY_CARD.items() if k != key}
    bomb = _bomb() if key == "labels" else "{x: " + _bomb() + "}"
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(card) + f"{key}: {bomb}\n")
    proc = cli("run", "--model", path, "--target", "tiny", "--synthetic-data", "--quiet", "--out", tmp_path / "out",
               timeout=60)
    assert_refused(proc, "card.yaml", "alias")
    assert not (tmp_path / "out").exists()


def test_a_single_anchor_and_alias_is_refused_naming_the_line(tmp_path):
    from toolkit.config.targets import validate_target_file

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in TINY_TARGET.items() if k != "pruning"})
                    + "pruning: &p {importance: l2}\nx: *p\n")
    with pytest.raises(EdgeShrinkError) as exc:
        validate_target_file(path)
    assert_error_line(exc, "tiny.yaml", "line", "aliases", "not allowed")


def test_publish_reads_cards_without_aliases_too(henv):
    from toolkit.delivery.publish import _update_card

    models = Path(henv["EDGESHRINK_MODELS_DIR"])
    (models / "zz_alias.yaml").write_text(yaml.safe_dump(dict(TINY_CARD, name="zz_alias")) + f"provenance: {{x: {_bomb()}}}\n")
    try:
        with pytest.raises(EdgeShrinkError) as exc:
            _update_card("zz_alias", lambda data: None)
        assert_error_line(exc, "alias")
    finally:
        (models / "zz_alias.yaml").unlink()


# ---- devices, FIFOs, folders, oversized files ---------------------------------------------------

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


def test_validate_dev_zero_is_refused_at_once():
    proc = cli("validate", "/dev/zero", timeout=60)
    assert_refused(proc, "/dev/zero", "not a regular file")


def test_validate_a_fifo_and_a_folder_says_what_they_are(fifo, tmp_path):
    assert_refused(cli("validate", fifo, timeout=60), "pipe.yaml", "FIFO")
    (tmp_path / "dir.yaml").mkdir()
    assert_refused(cli("validate", tmp_path / "dir.yaml", timeout=60), "dir.yaml", "is a folder")


@pytest.mark.parametrize("what", ["fifo", "folder", "dev-zero", "oversized", "dangling-link"])
def test_card_that_is_not_a_regular_file_is_refused(henv, tmp_path, fifo, what):
    path = {"fifo": fifo, "folder": tmp_path / "dir.yaml", "dev-zero": Path("/dev/zero"),
            "oversized": tmp_path / "big.yaml", "dangling-link": tmp_path / "gone.yaml"}[what]
    if what == "folder":
        path.mkdir()
    elif what == "oversized":
        path.write_text(yaml.safe_dump(TINY_CARD) + "# " + "x" * (1 << 20) + "\n")
    elif what == "dangling-link":
        path.symlink_to(tmp_path / "nowhere.yaml")
    words = {"fifo": "FIFO", "folder": "is a folder", "dev-zero": "not a regular file", "oversized": "limit",
             "dangling-link": "broken symbolic link"}[what]
    proc = cli("run", "--model", path, "--target", "tiny", "--synthetic-data", "--quiet", timeout=60)
    assert_refused(proc, words)


@pytest.mark.parametrize("what", ["fifo", "folder", "dev-zero", "oversized"])
def test_plan_that_is_not_a_regular_file_is_refused(tmp_path, fifo, what):
    path = {"fifo": fifo, "folder": tmp_path / "dir", "dev-zero": Path("/dev/zero"), "oversized": tmp_path / "c.json"}[what]
    if what == "folder":
        path.mkdir()
    elif what == "oversized":
        path.write_text("{" + " " * (1 << 20) + "}")
    words = {"fifo": "FIFO", "folder": "is a folder", "dev-zero": "not a regular file", "oversized": "limit"}[what]
    assert_refused(cli("run", "--plan", path, "--quiet", timeout=60), "plan", words)


@pytest.mark.parametrize("what", ["fifo", "folder", "dev-zero"])
def test_checkpoint_that_is_not_a_regular_file_is_refused(henv, tmp_path, fifo, what):
    path = {"fifo": fifo, "folder": tmp_path / "w.pt", "dev-zero": Path("/dev/zero")}[what]
    if what == "folder":
        path.mkdir()
    words = {"fifo": "FIFO", "folder": "is a folder", "dev-zero": "not a regular file"}[what]
    proc = cli("run", "--model", "tiny_mnv3", "--target", "tiny", "--synthetic-data", "--checkpoint", path, "--quiet",
               timeout=120)
    assert_refused(proc, "checkpoint", words)


def test_compare_refuses_a_results_file_that_is_a_fifo(henv, tmp_path):
    import json

    from tests.hostile.test_plans_and_bundles import MANIFEST

    bundle = tmp_path / "b"
    (bundle / "results").mkdir(parents=True)
    (bundle / "manifest.json").write_text(json.dumps(MANIFEST))
    os.mkfifo(bundle / "results" / "pi.json")
    assert_refused(cli("compare", bundle, timeout=60), "pi.json", "FIFO")


def test_library_checkpoint_loaders_refuse_non_regular_files(fifo):
    from toolkit.models.checkpoint import load_state_dict_file, read_checkpoint

    for load in (read_checkpoint, load_state_dict_file):
        for path in (fifo, Path("/dev/zero"), fifo.parent):
            with pytest.raises(EdgeShrinkError) as exc:
                load(path)
            assert_error_line(exc, str(path))


# ---- image folders ------------------------------------------------------------------------------

def _folder(root: Path, split="train", classes=("cat", "dog"), per_class=3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        d = root / split / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    return root


def _load_in_child(root: Path, *, timeout=120, extra: str = "") -> subprocess.CompletedProcess:
    """load_image_split in a fresh process (a regression would hang: the child is killed at `timeout`)."""
    code = textwrap.dedent(f"""
        import sys
        from toolkit.core.errors import EdgeShrinkError
        from toolkit.data import imagefolder
        {extra}
        try:
            imagefolder.load_image_split({str(root)!r}, "train", 16, 16, progress=False)
        except EdgeShrinkError as exc:
            print(f"edgeshrink: error: {{exc}}", file=sys.stderr)
            sys.exit(2)
        print("ok")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ))


@pytest.mark.parametrize("what", ["fifo", "dangling-link", "looping-link", "folder"])
def test_image_path_that_is_not_an_image_file_is_one_line(henv, tmp_path, what):
    _folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "x.jpg"
    if what == "fifo":
        os.mkfifo(bad)
    elif what == "dangling-link":
        bad.symlink_to(tmp_path / "nowhere.jpg")
    elif what == "looping-link":
        bad.symlink_to(tmp_path / "train" / "dog" / "y.jpg")
        (tmp_path / "train" / "dog" / "y.jpg").symlink_to(bad)
    else:
        bad.mkdir()
    words = {"fifo": "FIFO", "dangling-link": "broken symbolic link", "looping-link": "loops", "folder": "is a folder"}[what]
    proc = _load_in_child(tmp_path)
    assert_refused(proc, "x.jpg" if what != "looping-link" else ".jpg", words)


def test_dangling_class_folder_link_is_one_line(henv, tmp_path):
    from toolkit.data.imagefolder import load_image_split

    _folder(tmp_path)
    (tmp_path / "train" / "emu").symlink_to(tmp_path / "nowhere")
    with pytest.raises(EdgeShrinkError) as exc:
        load_image_split(tmp_path, "train", 16, 16, progress=False)
    assert_error_line(exc, "emu", "symbolic link")


def test_hidden_and_macos_resource_files_are_ignored(henv, tmp_path):
    from toolkit.data.imagefolder import load_image_split

    _folder(tmp_path)
    dog = tmp_path / "train" / "dog"
    (dog / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    (dog / ".hidden.jpg").write_bytes(b"not an image")
    (dog / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    os.mkfifo(dog / ".pipe.jpg")
    split = load_image_split(tmp_path, "train", 16, 16, progress=False)
    assert len(split) == 6 and split.classes == ["cat", "dog"]


def test_threaded_decode_gives_the_same_pixels_and_never_forks(henv, tmp_path, monkeypatch):
    from toolkit.data import imagefolder

    _folder(tmp_path, per_class=40)
    files, _, _ = imagefolder.list_image_folder(tmp_path / "train")
    expected = np.stack([imagefolder._decode((str(f), 16, 16, "bilinear", 3)) for f in files])

    def no_fork(*a, **k):
        raise AssertionError("image decoding must not fork")

    monkeypatch.setattr(os, "fork", no_fork)
    split = imagefolder.load_image_split(tmp_path, "train", 16, 16, progress=False)
    assert np.array_equal(split.images, expected)
    cached = imagefolder.load_image_split(tmp_path, "train", 16, 16, progress=False)  # from the cache
    assert np.array_equal(cached.images, expected)


def test_a_stuck_decoder_becomes_a_one_line_error(henv, tmp_path, monkeypatch):
    from toolkit.data import imagefolder

    _folder(tmp_path)
    release = threading.Event()
    real = imagefolder._decode

    def decode(args):
        if args[0].endswith("dog/1.jpg"):
            release.wait(60)  # a read that never returns (a hung mount, a FIFO opened by mistake)
        return real(args)

    monkeypatch.setattr(imagefolder, "_decode", decode)
    monkeypatch.setattr(imagefolder, "DECODE_STALL_S", 1.0)
    start = time.monotonic()
    try:
        with pytest.raises(EdgeShrinkError) as exc:
            imagefolder.load_image_split(tmp_path, "train", 16, 16, progress=False)
    finally:
        release.set()
    assert_error_line(exc, "dog/1.jpg", "has not finished")
    assert time.monotonic() - start < 30


def test_sigterm_stops_a_decode_that_hangs(henv, tmp_path):
    """The CLI's SIGTERM handler reaches the waiting main thread: the process ends at once, as interrupted."""
    _folder(tmp_path)
    extra = textwrap.dedent("""
        import sys, threading, time
        from toolkit.cli import _terminate_like_interrupt
        _terminate_like_interrupt()
        def stuck(args):
            # several decode workers may reach here at once: one write per line keeps lines whole
            sys.stdout.write("decoding\\n")
            sys.stdout.flush()
            threading.Event().wait()
        imagefolder._decode = stuck
    """).replace("\n", "\n        ")
    code = textwrap.dedent(f"""
        import sys
        from toolkit.data import imagefolder
        {extra}
        try:
            imagefolder.load_image_split({str(tmp_path)!r}, "train", 16, 16, progress=False)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=dict(os.environ))
    try:
        assert proc.stdout.readline().startswith("decoding")
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err


# ---- the cache folder ---------------------------------------------------------------------------

def test_cache_dir_pointing_at_a_file_is_one_line(tmp_path, monkeypatch):
    from toolkit.core.paths import cache_dir

    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EDGESHRINK_CACHE_DIR", str(blocker))
    with pytest.raises(EdgeShrinkError) as exc:
        cache_dir()
    assert_error_line(exc, "cache-file", "is a file", "EDGESHRINK_CACHE_DIR")
    assert blocker.read_text() == "not a folder"


def test_cli_with_cache_dir_pointing_at_a_file_is_one_line(henv, tmp_path, monkeypatch):
    _folder(tmp_path / "data", classes=("a", "b", "c", "d"), per_class=1)
    _folder(tmp_path / "data", split="val", classes=("a", "b", "c", "d"), per_class=1)
    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    monkeypatch.setenv("EDGESHRINK_CACHE_DIR", str(blocker))
    proc = cli("eval-pack", "--model", "tiny_mnv3", "--data", tmp_path / "data", "--out", tmp_path / "x.npz", timeout=120)
    assert_refused(proc, "cache-file", "EDGESHRINK_CACHE_DIR")
    assert not (tmp_path / "x.npz").exists()


def test_default_cache_in_a_read_only_checkout_is_one_line(monkeypatch):
    from toolkit.core import paths

    monkeypatch.delenv("EDGESHRINK_CACHE_DIR", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", Path("/sys"))  # a place even root cannot create folders in
    monkeypatch.setattr(paths, "SOURCE_CHECKOUT", True)
    with pytest.raises(EdgeShrinkError) as exc:
        paths.cache_dir()
    assert_error_line(exc, "/sys/.cache", "cannot be created or written", "EDGESHRINK_CACHE_DIR")
