"""The package's rooms and the one direction of imports between them.

Every module under toolkit/ is parsed (no import runs); each `import toolkit.x...` or
`from toolkit.x... import ...`, at module level or inside a function, and each module path named
in a string (workers started with `python -m toolkit...`, lazy registries) must point to its own
folder or to a folder earlier in LAYERS. The face (api, cli, the package __init__) may import anything."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "toolkit"
LAYERS = ["core", "data", "config", "models", "runtime", "convert", "quantize", "train", "tasks", "prune",
          "sparsity", "bench", "pipeline", "delivery", "studies"]
FACE = {"api", "cli", "__init__", "__main__"}
MODULE_STRING = re.compile(r"^toolkit(\.[a-z_0-9]+)+(:[A-Za-z_]\w*)?$")


def _room(module: str) -> str:
    """'toolkit.pipeline.runner' -> 'pipeline'; 'toolkit.api' -> 'api'; 'toolkit' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "toolkit":
            names = [f"{node.module}.{alias.name}" for alias in node.names] if node.module == "toolkit" else [node.module]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.lineno, "<relative>"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "toolkit"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            found.append((node.lineno, node.value.split(":")[0]))
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def test_every_module_sits_in_a_room_of_the_declared_order():
    loose = [name for name, path in _modules() if path.parent == PACKAGE and path.stem not in FACE]
    assert not loose, f"modules outside every folder (give each a room in LAYERS): {loose}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= set(LAYERS), f"folders missing from LAYERS: {sorted(folders - set(LAYERS))}"


def test_imports_point_only_to_the_same_room_or_an_earlier_one():
    rank = {room: i for i, room in enumerate(LAYERS)}
    upward = []
    for name, path in _modules():
        src = _room(name)
        if src in FACE:
            continue
        for line, target in _imports(path):
            if target == "<relative>":
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} relative import (write toolkit.<room>...)")
                continue
            dst = _room(target)
            if dst in FACE or rank.get(dst, -1) > rank[src]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {src} -> {target}")
    assert not upward, "imports pointing up the room order:\n" + "\n".join(upward)


def test_no_two_modules_share_a_file_name_with_the_standard_library():
    import sys

    clashes = [str(path.relative_to(PACKAGE.parent)) for _, path in _modules()
               if path.stem in sys.stdlib_module_names and path.stem not in {"__init__", "__main__"}]
    assert not clashes, f"modules named like a standard-library module: {clashes}"


def test_the_guard_catches_an_upward_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from toolkit.pipeline.runner import Runner\n    return ['-m', 'toolkit.bench.worker']\n")
    assert [t for _, t in _imports(bad)] == ["toolkit.pipeline.runner", "toolkit.bench.worker"]
