"""`make deploy TARGET=jetson`: the family name is an alias of the current Jetson profile, said on stderr."""

from __future__ import annotations

import pytest


def test_jetson_alias_names_the_current_jetson_profile_and_says_so(capsys):
    from toolkit.config.targets import load_target

    profile = load_target("jetson")
    assert profile.name == "jetson-orin-nano" and profile.runtime.engine == "tensorrt"
    assert "alias of the 'jetson-orin-nano' profile" in capsys.readouterr().err


def test_a_profile_file_named_like_an_alias_wins(tmp_path, monkeypatch):
    import shutil

    from tests.conftest import REPO
    from toolkit.config.targets import resolve_target_alias

    shutil.copy(REPO / "targets" / "jetson-nano.yaml", tmp_path / "jetson.yaml")
    monkeypatch.setenv("EDGESHRINK_TARGETS_DIR", str(tmp_path))
    assert resolve_target_alias("jetson") == "jetson"


@pytest.mark.parametrize("name", ["jetsn", "../jetson"])
def test_unknown_or_unsafe_target_names_are_still_refused(name):
    from toolkit.config.targets import load_target
    from toolkit.core.errors import EdgeShrinkError

    with pytest.raises(EdgeShrinkError, match="target"):
        load_target(name)
