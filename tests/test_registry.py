"""The plugin registry: registration, lookup, the one error for an unknown name, lazy built-ins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from autoquant.errors import CalibrationError, ConfigError
from autoquant.registry import DATA_READERS, LABEL_FORMATS, OBJECTIVES, THRESHOLD_METHODS, Registry


def test_register_get_names_and_remove() -> None:
    registry: Registry[object] = Registry("widget", ConfigError)

    @registry.register("round")
    class Round:
        pass

    square = registry.add("square", object())
    assert registry.names() == ("round", "square")
    assert registry.get("round") is Round and registry.get("square") is square
    assert "round" in registry and "oval" not in registry
    assert registry.items() == [("round", Round), ("square", square)]
    registry.remove("round")
    assert registry.names() == ("square",)


def test_unknown_name_is_one_error_listing_the_valid_names() -> None:
    registry: Registry[int] = Registry("widget", CalibrationError)
    registry.add("a", 1)
    registry.add("b", 2)
    with pytest.raises(CalibrationError, match=r"^unknown widget 'c'; valid: a, b$"):
        registry.get("c")


def test_a_name_is_registered_once() -> None:
    registry: Registry[int] = Registry("widget", ConfigError)
    registry.add("a", 1)
    with pytest.raises(ValueError, match="a widget is already registered as 'a': 1"):
        registry.add("a", 2)


def test_registered_lasts_for_the_with_block() -> None:
    registry: Registry[int] = Registry("widget", ConfigError)
    with registry.registered("a", 1) as plugin:
        assert plugin == 1 and registry.names() == ("a",)
    assert registry.names() == ()


def test_provider_is_imported_on_the_first_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-ins register themselves when their module is imported; the registry imports it
    on the first lookup, so a caller that only asks for names imports no plugin module."""
    registry: Registry[int] = Registry("widget", ConfigError, provider="aq_test_widgets")
    (tmp_path / "aq_test_widgets.py").write_text(
        "from tests.test_registry import WIDGETS\nWIDGETS[0].add('builtin', 7)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    WIDGETS[:] = [registry]
    try:
        assert "aq_test_widgets" not in sys.modules
        assert registry.names() == ("builtin",)
        assert registry.get("builtin") == 7 and "aq_test_widgets" in sys.modules
    finally:
        sys.modules.pop("aq_test_widgets", None)


WIDGETS: list[Registry[int]] = []


def test_the_plugin_points_hold_the_built_ins() -> None:
    assert THRESHOLD_METHODS.names() == ("max", "percentile", "kl", "symkl", "jsd", "mse")
    assert set(DATA_READERS.names()) == {"callable", "images", "lmdb", "numpy"}
    assert LABEL_FORMATS.names() == ("classification", "detection")
    assert set(OBJECTIVES.names()) == {"top1", "top5", "agreement", "cosine", "map"}


@pytest.mark.slow  # a fresh interpreter
def test_config_validates_names_before_any_plugin_module_is_imported() -> None:
    import subprocess

    code = (
        "import sys\n"
        "import autoquant.config as config\n"
        "assert not {'autoquant.engine', 'autoquant.data'} & set(sys.modules), 'config imported a plugin module'\n"
        "config.QuantizationConfig(method='symkl')\n"
        "config.DataConfig(format='lmdb', label_format='detection')\n"
        "try:\n"
        "    config.QuantizationConfig(method='l1')\n"
        "except ValueError as exc:\n"
        "    assert 'must be one of max, percentile, kl, symkl, jsd, mse' in str(exc)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_provider_that_fails_to_import_fails_every_lookup() -> None:
    registry: Registry[int] = Registry("widget", ConfigError, provider="aq_no_such_module_xyz")
    for _ in range(2):
        with pytest.raises(ModuleNotFoundError, match="aq_no_such_module_xyz"):
            registry.names()
