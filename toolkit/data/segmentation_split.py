"""Case-level held-out splits for segmentation data, and the case key of 2-D image files.

A split is always made over case names (patients), never over slices or images: every file of a
case lands on the same side. The card's `dataset.held_out` is a fraction of the cases (0 < f < 1),
a count of cases (an integer >= 1) or an explicit list of case names; without it a fixed fraction
(DEFAULT_HELD_OUT) of a seeded permutation of the sorted case names is held out, which for the 260
MSD hippocampus cases is the 52 cases the published checkpoints were scored on."""

from __future__ import annotations

import re
from typing import Optional, Sequence, Union

import numpy as np

from toolkit.core.errors import EdgeShrinkError

SPLIT_SEED = 0
DEFAULT_HELD_OUT = 0.2
# 2-D files named <case>_slice_012.png, <case>-z12.png, <case>_frame3.png: the case is the part
# before the slice marker. Names without one are each their own case (set dataset.case_pattern).
DEFAULT_CASE_PATTERN = r"^(?P<case>.+?)[_-](?:slice|slc|sl|z|frame)[_-]?\d+$"

HeldOut = Union[int, float, Sequence[str], None]


def case_split(names: list[str], held_out: int, seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """(train names, held-out names): the last `held_out` of a seeded permutation of the sorted names."""
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    held = set(names[i] for i in order[-held_out:]) if held_out else set()
    return [n for n in names if n not in held], sorted(held)


def held_out_count(total: int, held_out: HeldOut) -> int:
    """How many of `total` cases a fraction or count holds out; refuses a split that leaves a side empty."""
    if total < 2:
        raise EdgeShrinkError(f"the data holds {total} case(s); a held-out split needs at least 2 "
                              "(one to train on, one to score); add cases")
    fraction = DEFAULT_HELD_OUT if held_out is None else held_out
    if isinstance(fraction, float):
        return min(total - 1, max(1, int(round(fraction * total))))
    if not 1 <= fraction <= total - 1:
        raise EdgeShrinkError(f"dataset.held_out is {fraction} cases but the data holds {total}; "
                              f"hold out between 1 and {total - 1} cases, or give a fraction such as 0.2")
    return int(fraction)


def split_cases(cases: list[str], held_out: HeldOut = None, seed: int = SPLIT_SEED) -> tuple[list[str], list[str], str]:
    """(train cases, held-out cases, how the split was made) over unique case names."""
    cases = sorted(set(cases))
    if isinstance(held_out, (list, tuple)):
        return _listed_split(cases, list(held_out))
    if held_out == 0 and not isinstance(held_out, float):  # the Python API's "train on everything" (cards refuse 0)
        return cases, [], "no cases held out"
    n = held_out_count(len(cases), held_out)
    train, held = case_split(cases, n, seed)
    given = "default fraction 0.2" if held_out is None else (f"fraction {held_out}" if isinstance(held_out, float) else "count")
    return train, held, f"seeded ({seed}) permutation of sorted case names; last {n} held out ({given})"


def _listed_split(cases: list[str], listed: list[str]) -> tuple[list[str], list[str], str]:
    unknown = [c for c in listed if c not in set(cases)]
    if unknown:
        raise EdgeShrinkError(f"dataset.held_out names case {unknown[0]!r}, which is not in the data "
                              f"(cases look like {', '.join(cases[:3])}); fix the name or remove it from the list")
    held = sorted(set(listed))
    train = [c for c in cases if c not in set(held)]
    if not train:
        raise EdgeShrinkError(f"dataset.held_out lists all {len(cases)} cases; leave at least one case to train on")
    return train, held, f"the {len(held)} cases listed in the card's dataset.held_out"


def compile_case_pattern(pattern: Optional[str]) -> re.Pattern:
    """The card's case pattern (or the default), compiled; a bad regular expression is one line."""
    try:
        return re.compile(pattern or DEFAULT_CASE_PATTERN, 0 if pattern else re.IGNORECASE)
    except re.error as exc:
        raise EdgeShrinkError(f"dataset.case_pattern {pattern!r} is not a regular expression ({exc}); "
                              r"write one such as '^(?P<case>.+)_\d+$'") from None


def case_key(stem: str, pattern: re.Pattern, *, given: bool) -> str:
    """The case a 2-D file belongs to: the pattern's `case` group (else group 1, else the whole
    match) searched in the file name without extension. A name the default pattern does not match
    is its own case; one a card's pattern does not match is an error naming it."""
    m = pattern.search(stem)
    if m is None:
        if given:
            raise EdgeShrinkError(f"file {stem!r} does not match dataset.case_pattern {pattern.pattern!r}; "
                                  "fix the pattern so that it matches every image name")
        return stem
    if "case" in pattern.groupindex:
        key = m.group("case")
    else:
        key = m.group(1) if pattern.groups else m.group(0)
    if not key:
        raise EdgeShrinkError(f"dataset.case_pattern {pattern.pattern!r} gives an empty case for {stem!r}; fix the pattern")
    return key
