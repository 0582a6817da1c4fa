"""deploy/rpi/edgeshrink_run.py run as-is on any .tflite classifier: tiny real models converted by
TensorFlow's TFLite converter (float logits, float softmax, uint8 and int8 quantized I/O, 1000 and
1001 outputs), run by the real ai-edge-litert in a venv holding only numpy + ai-edge-litert +
Pillow, on real image files."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "rpi" / "edgeshrink_run.py"
IMAGENET = ["--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225"]


def common():
    spec = importlib.util.spec_from_file_location("edgeshrink_common_test", REPO / "deploy" / "common" / "edgeshrink_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _convert(keras_model, quantize: str | None, size: int) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if quantize:
        rng = np.random.default_rng(0)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rng.uniform(-2, 2, (1, size, size, 3)).astype(np.float32)] for _ in range(8))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = {"uint8": tf.uint8, "int8": tf.int8}[quantize]
    return conv.convert()


def _classifier(classes: int, softmax: bool, size: int = 16):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(classes)
    inp = tf.keras.Input((size, size, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    peaked = tf.keras.initializers.RandomNormal(stddev=8.0)  # confident outputs survive uint8 softmax quantization
    x = tf.keras.layers.Dense(classes, activation="softmax" if softmax else None, kernel_initializer=peaked)(x)
    return tf.keras.Model(inp, x)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """name -> .tflite path: float logits (1001), float softmax (1000), uint8 softmax (1001), int8 logits (1000)."""
    out = tmp_path_factory.mktemp("tflite")
    recipes = {"float_logits_1001": (1001, False, None), "float_softmax_1000": (1000, True, None),
               "uint8_softmax_1001": (1001, True, "uint8"), "int8_logits_1000": (1000, False, "int8")}
    paths = {}
    for name, (classes, softmax, quantize) in recipes.items():
        paths[name] = out / f"{name}.tflite"
        paths[name].write_bytes(_convert(_classifier(classes, softmax), quantize, 16))
    return paths


@pytest.fixture(scope="session")
def pi_python(tmp_path_factory):
    """A clean venv with only numpy + ai-edge-litert (the device pins) + Pillow to decode images."""
    venv = tmp_path_factory.mktemp("pi") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "numpy==1.26.4", "ai-edge-litert==2.1.0", "pillow==11.3.0"], check=True)
    return venv / "bin" / "python"


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Six real PNG/JPEG files of different sizes plus one broken file."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(40, 60), (16, 16), (100, 30), (23, 57), (64, 64), (9, 11)]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def labels_file(tmp_path, count: int, background: bool) -> Path:
    path = tmp_path / f"labels{count}.txt"
    names = (["background"] if background else []) + [f"class_{i}" for i in range(count - background)]
    path.write_text("\n".join(names) + "\n")
    return path


def run(python, *args, cwd=None):
    return subprocess.run([str(python), str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def reference_scores(model: Path, rgb: np.ndarray, mean_std: bool) -> np.ndarray:
    """The model's output for one image, computed here with Pillow's resize and the host runtime."""
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    interp = Interpreter(model_path=str(model))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    h, w = inp["shape"][1:3]
    x = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))[None]
    if mean_std:
        x = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interp.invoke()
    return interp.get_tensor(out["index"])[0].astype(np.float64)


def test_float_logits_1001_outputs_with_1000_labels(models, pi_python, images, tmp_path):
    from PIL import Image

    out = tmp_path / "r.json"
    proc = run(pi_python, "--model", models["float_logits_1001"], "--labels", labels_file(tmp_path, 1000, False),
               *IMAGENET, "--input", images, "--top-k", "5", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert "output 0 is background, labels shifted by one" in r["labels_note"] and "shifted" in proc.stdout
    assert r["skipped_count"] == 1 and r["skipped"][0]["input"].endswith("broken.jpg")
    assert len(r["predictions"]) == 6 and r["scores"] == "logits (softmax applied)"
    assert r["input"]["height"] == 16 and r["input"]["dtype"] == "float32" and r["input"]["mode"] == "mean_std"
    first = r["predictions"][0]
    logits = reference_scores(models["float_logits_1001"], np.asarray(Image.open(first["input"]).convert("RGB")), True)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [t["index"] for t in first["top"]] == list(np.argsort(-probs, kind="stable")[:5])
    assert first["top"][0]["score"] == pytest.approx(probs.max(), rel=1e-4)
    assert first["top"][0]["label"] == ("background" if first["top"][0]["index"] == 0 else f"class_{first['top'][0]['index'] - 1}")
    assert r["end_to_end_ms"]["p50"] > 0 and r["runtime"]["name"] == "ai-edge-litert" and r["runtime"]["version"] == "2.1.0"
    assert r["runtime"]["xnnpack_applied"] is True and r["runtime"]["delegate"] == "xnnpack"
    from toolkit.models.checkpoint import sha256_file

    assert r["sha256"] == sha256_file(models["float_logits_1001"]) and r["file"] == "float_logits_1001.tflite"


def test_uint8_softmax_model_with_background_row_labels(models, pi_python, images, tmp_path):
    out = tmp_path / "r.json"
    proc = run(pi_python, "--model", models["uint8_softmax_1001"], "--labels", labels_file(tmp_path, 1001, True),
               "--input", images / "img0.jpg", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert "feeding raw pixels" in proc.stdout and r["input"]["dtype"] == "uint8" and r["input"]["mode"] == "raw"
    assert "background row at index 0" in r["labels_note"]
    assert r["scores"] == "probabilities (softmax in the model)"  # no second softmax on dequantized probs
    top = r["predictions"][0]["top"]
    # a second softmax over dequantized probabilities would flatten the top score to about 1/1000
    assert top[0]["score"] > 0.05 and sum(t["score"] for t in top) <= 1.0 + 1e-6


def test_int8_input_model_drops_a_background_row_it_does_not_have(models, pi_python, images, tmp_path):
    out = tmp_path / "r.json"
    proc = run(pi_python, "--model", models["int8_logits_1000"], "--labels", labels_file(tmp_path, 1001, True),
               *IMAGENET, "--input", images / "img1.png", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["input"]["dtype"] == "int8" and r["input"]["quantization"]["scale"] > 0
    assert "background row dropped" in r["labels_note"] and r["scores"] == "logits (softmax applied)"
    assert all(t["label"] == f"class_{t['index']}" for t in r["predictions"][0]["top"])


def test_already_softmaxed_float_output_is_not_softmaxed_again(models, pi_python, images, tmp_path):
    from PIL import Image

    out = tmp_path / "r.json"
    proc = run(pi_python, "--model", models["float_softmax_1000"], *IMAGENET, "--input", images / "img4.jpg",
               "--top-k", "2", "--json", out, "--no-xnnpack")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["scores"].startswith("probabilities") and "no labels" in r["labels_note"]
    ref = reference_scores(models["float_softmax_1000"], np.asarray(Image.open(images / "img4.jpg").convert("RGB")), True)
    assert r["predictions"][0]["top"][0]["score"] == pytest.approx(ref.max(), rel=1e-4)
    assert r["runtime"]["xnnpack_applied"] is False and r["runtime"]["delegate"].startswith("none")


def test_accuracy_against_a_folder_per_class_truth(models, pi_python, images, tmp_path):
    labels = labels_file(tmp_path, 1000, False)
    first = run(pi_python, "--model", models["int8_logits_1000"], "--labels", labels, *IMAGENET, "--input", images,
                "--json", tmp_path / "a.json")
    preds = json.loads((tmp_path / "a.json").read_text())["predictions"]
    truth = tmp_path / "truth"
    for i, p in enumerate(preds):  # every image filed under its predicted class, except the first
        label = p["top"][0]["label"] if i else ("class_999" if p["top"][0]["index"] != 999 else "class_0")
        (truth / label).mkdir(parents=True, exist_ok=True)
        (truth / label / Path(p["input"]).name).write_bytes(Path(p["input"]).read_bytes())
    proc = run(pi_python, "--model", models["int8_logits_1000"], "--labels", labels, *IMAGENET, "--truth", truth,
               "--top-k", "1", "--json", tmp_path / "b.json")
    assert first.returncode == 0 and proc.returncode == 0, proc.stderr
    acc = json.loads((tmp_path / "b.json").read_text())["accuracy"]
    assert acc["images"] == len(preds) and acc["top1"] == pytest.approx((len(preds) - 1) / len(preds))
    (truth / "no_such_class").mkdir()
    bad = run(pi_python, "--model", models["int8_logits_1000"], "--labels", labels, *IMAGENET, "--truth", truth)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "no_such_class name no label" in bad.stderr


@pytest.mark.parametrize("case, expected", [
    ("labels_mismatch", "the labels have 10 lines but the model has 1001 outputs"),
    ("float_without_normalisation", "takes float32 input: pass --mean"),
    ("mean_without_std", "pass --mean and --std together"),
    ("scale_and_mean", "contradict"),
    ("not_tflite", "is not a TFLite flatbuffer"),
    ("missing_model", "cannot read"),
])
def test_bad_input_is_one_line(case, expected, models, pi_python, tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model at all")
    args = {"labels_mismatch": ["--model", models["float_logits_1001"], "--labels", labels_file(tmp_path, 10, False), *IMAGENET],
            "float_without_normalisation": ["--model", models["float_logits_1001"]],
            "mean_without_std": ["--model", models["float_logits_1001"], "--mean", "0.5", "0.5", "0.5"],
            "scale_and_mean": ["--model", models["float_logits_1001"], "--scale", "raw", *IMAGENET],
            "not_tflite": ["--model", junk], "missing_model": ["--model", tmp_path / "nope.tflite"]}[case]
    proc = run(pi_python, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], proc.stderr


def test_device_helpers_import_with_numpy_alone(device_python, tmp_path):
    """The helper module and the runner's image module run in the minimal device venv (numpy +
    ai-edge-litert, no Pillow, no torch): resizing falls back to numpy, PNG masks need no Pillow."""
    code = ("import importlib.util, sys\n"
            "def load(name, path):\n"
            "    spec = importlib.util.spec_from_file_location(name, path); m = importlib.util.module_from_spec(spec)\n"
            "    sys.modules[name] = m; spec.loader.exec_module(m); return m\n"
            "c = load('edgeshrink_common', sys.argv[1]); i = load('edgeshrink_run_images', sys.argv[2]); import numpy as np\n"
            "r = c.time_calls(lambda: None, 1, 3, 0.0); img = i.resize_bilinear(np.zeros((5, 7, 3), np.uint8), 4, 4)\n"
            "i.write_png(sys.argv[3], np.zeros((4, 5), np.uint8))\n"
            "assert r['runs'] == 3 and img.shape == (4, 4, 3) and c.peak_rss_mb() > 0\n"
            "assert not {'torch', 'tensorflow', 'PIL', 'cv2', 'toolkit'} & set(sys.modules); print('ok')")
    proc = subprocess.run([str(device_python), "-I", "-c", code, str(REPO / "deploy" / "common" / "edgeshrink_common.py"),
                           str(REPO / "deploy" / "rpi" / "edgeshrink_run_images.py"), str(tmp_path / "m.png")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    from PIL import Image

    assert np.asarray(Image.open(tmp_path / "m.png")).shape == (4, 5)


def test_one_resize_whatever_the_decoder(tmp_path, monkeypatch):
    """Pillow's BILINEAR, bit-exact, whether Pillow or OpenCV decodes (and whether Pillow or numpy
    resizes); OpenCV's BGR becomes RGB."""
    from PIL import Image

    runner()
    images = sys.modules["edgeshrink_run_images"]
    rng = np.random.default_rng(1)
    for (h, w), (oh, ow) in [((37, 53), (64, 64)), ((480, 640), (224, 224)), ((100, 100), (33, 71)), ((64, 64), (64, 32))]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(arr).resize((ow, oh), Image.BILINEAR))
        assert np.array_equal(images.resize_bilinear(arr, oh, ow), ref) and np.array_equal(images.resize_numpy(arr, oh, ow), ref)
    arr = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    with_pillow = images.resize_bilinear(images.decode(tmp_path / "x.png"), 16, 16)
    monkeypatch.setitem(sys.modules, "PIL", None)  # as on a device with OpenCV only
    with_opencv = images.resize_bilinear(images.decode(tmp_path / "x.png"), 16, 16)
    assert np.array_equal(with_pillow, with_opencv) and np.array_equal(images.decode(tmp_path / "x.png"), arr)
    with pytest.raises(ValueError):
        images.decode(tmp_path / "missing.png")


def runner():
    """deploy/rpi/edgeshrink_run.py loaded as a module: its start-up loads the modules beside it."""
    spec = importlib.util.spec_from_file_location("pi_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_top_k_is_stable_and_labels_align():
    c = common()
    assert list(c.top_k([0.1, 0.3, 0.3, 0.05, 0.3], 3)) == [1, 2, 4]
    runner()
    pi = sys.modules["edgeshrink_run_model"]  # where the labels code lives
    assert pi.align_labels(["a", "b"], 3) == (["background", "a", "b"], pi.align_labels(["a", "b"], 3)[1])
    assert pi.align_labels(["???", "a", "b"], 2)[0] == ["a", "b"]
    with pytest.raises(SystemExit, match="3 lines but the model has 5"):
        pi.align_labels(["a", "b", "c"], 5)


def test_every_runner_file_is_loaded_and_bundled():
    """The script's own modules (loaded from beside it, hash-checked) are exactly the other .py files
    in deploy/rpi/, and a TFLite bundle gets every one of them."""
    from toolkit.pipeline.device_files import RPI_RUNNER, device_scripts

    on_disk = {p.name for p in SCRIPT.parent.glob("*.py")}
    assert {"edgeshrink_run.py", *(f"{m}.py" for m in runner().RUNNER_MODULES)} == on_disk == set(RPI_RUNNER)
    for transport in ("local", "ssh", "adb"):
        assert {p.name for p in device_scripts("tflite", transport)} >= on_disk
