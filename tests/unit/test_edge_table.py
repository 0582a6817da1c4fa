"""The file matrix is data: every key an edge row names has its step in one table, so adding a
format is a row and its converter, never a branch in the runner."""

from __future__ import annotations

import ast
from pathlib import Path

from toolkit.pipeline.edge_steps import AFTER, BACKGROUND, CHECKS, CONVERTERS, RECOVER
from toolkit.pipeline.edges import EDGES

RUNNER = Path(__file__).resolve().parents[2] / "toolkit" / "pipeline" / "runner.py"


def test_every_key_an_edge_names_has_its_step():
    for edge in EDGES:
        assert edge.converter in CONVERTERS, edge
        assert edge.check is None or edge.check in CHECKS, edge
        assert all(step in AFTER for step in edge.after), edge
        assert edge.recover is None or (edge.recover in RECOVER and edge.check), edge
        assert not edge.background or edge.job in BACKGROUND, edge


def test_the_runner_never_branches_on_a_particular_edge():
    compared = []
    for node in ast.walk(ast.parse(RUNNER.read_text())):
        sides = [node.left, *node.comparators] if isinstance(node, ast.Compare) else []
        names_a_row = any(isinstance(s, ast.Constant) and isinstance(s.value, str) for s in sides)
        row = ("edge.key", "edge.converter", "edge.job", "edge.check", "edge.after", "family.stage")
        if names_a_row and any(ast.unparse(s).startswith(row) for s in sides):
            compared.append(ast.unparse(node))  # e.g. `edge.key == "tflite-int8"`
    assert not compared, f"the runner branches on edge rows: {compared}"
