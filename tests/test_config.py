"""Config loading: round trips, seed aliases, path resolution and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoquant.config import load_config, parse_config
from autoquant.errors import ConfigError
from tests.helpers import DIGITS_CONFIG, ROOT, write_config


@pytest.mark.parametrize("name", ["reference.yaml", "digits.yaml"])
def test_shipped_configs_round_trip(name: str, tmp_path: Path) -> None:
    config = load_config(ROOT / "configs" / name)
    again = parse_config(config.to_yaml(), tmp_path / "elsewhere.yaml")
    assert again == config


def test_reference_config_shows_every_key() -> None:
    import yaml

    written = yaml.safe_load((ROOT / "configs" / "reference.yaml").read_text())
    dumped = load_config(ROOT / "configs" / "reference.yaml").model_dump(mode="json")
    for section, keys in dumped.items():
        assert set(written[section]) == set(keys), section


def test_relative_paths_resolve_against_the_config_folder() -> None:
    config = load_config(DIGITS_CONFIG)
    assert config.model.path == (ROOT / "examples" / "digits" / "model.onnx").resolve()
    assert config.calibration.source == str((ROOT / "examples/digits/data/calib.npy").resolve())
    assert config.output.directory == (ROOT / "runs" / "digits").resolve()


def test_seed_aliases(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
model: {path: m.onnx, input_data_shape: {data: [1, 3, 8, 8]}}
calibration:
  calib_image_source: imgs/ImageList.txt
  data_preproccess_str: "resize_h=8,resize_w=8"
  histogram_bin_num: 4096
quantization: {th_method: symkl, bin: 1024, exclude_op: [conv1], first_conv_force_u8: true}
search: {auto_calib: true, accept_int8_decay: 0.01, fp32_score: 0.75}
""",
    )
    config = load_config(path)
    assert config.calibration.data_preprocess_str == "resize_h=8,resize_w=8"
    assert config.calibration.source == str(tmp_path / "imgs" / "ImageList.txt")
    assert config.calibration.histogram_bins == 4096
    assert (config.quantization.method, config.quantization.bins) == ("symkl", 1024)
    assert config.quantization.nodes_to_exclude == ["conv1"] and config.quantization.first_input_unsigned
    assert config.search.mode == "full" and config.search.fp32_score == 0.75
    assert config.model.inputs == {"data": [1, 3, 8, 8]}


def test_callable_sources_are_kept_or_resolved(tmp_path: Path) -> None:
    body = "model: {path: m.onnx}\ncalibration: {source: %s}\n"
    assert (
        load_config(write_config(tmp_path, body % "mypkg.data:calib")).calibration.source
        == "mypkg.data:calib"
    )
    resolved = load_config(write_config(tmp_path, body % "tools/feed.py:calib")).calibration.source
    assert resolved == f"{tmp_path / 'tools' / 'feed.py'}:calib"


def test_unknown_key_names_file_line_and_key_path(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, "model: {path: m.onnx}\ncalibration:\n  source: x.npy\n  calib_iteration: 5\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:4: calibration.calib_iteration: unknown key")


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "model: {path: m.onnx}\ncalibration: {source: x.npy}\nquantization:\n  bins: 1000\n  method: fancy\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "quantization.bins: must be a multiple of 128" in lines[0] and ":4:" in lines[0]
    assert "quantization.method" in lines[1] and "'fancy'" in lines[1] and ":5:" in lines[1]


def test_wrong_type_and_missing_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"search.accept_int8_decay: .*'half a percent'"):
        load_config(
            write_config(
                tmp_path,
                "model: {path: m}\ncalibration: {source: x}\nsearch: {accept_int8_decay: half a percent}\n",
            )
        )
    with pytest.raises(ConfigError, match="calibration: required key is missing"):
        load_config(write_config(tmp_path, "model: {path: m}\n"))


def test_yaml_syntax_error_has_a_line_number(tmp_path: Path) -> None:
    path = write_config(tmp_path, "model:\n  path: m.onnx\ncalibration: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: YAML syntax error"):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.yaml")


def test_ratio_search_needs_a_divergence_method(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "model: {path: m}\ncalibration: {source: x}\nquantization: {ratio_search: true, method: max}\n",
    )
    with pytest.raises(ConfigError, match="ratio_search needs a divergence method"):
        load_config(path)


def test_replace_derives_a_new_config() -> None:
    config = load_config(DIGITS_CONFIG)
    changed = config.replace(quantization={"method": "mse"})
    assert changed.quantization.method == "mse" and config.quantization.method == "kl"


def test_objective_and_decode_files_resolve_against_the_config(tmp_path: Path) -> None:
    body = "model: {path: m}\ncalibration: {source: x}\ntest: {objective: %s, decode: %s}\n"
    config = load_config(write_config(tmp_path, body % ("my/obj.py:make", "pkg.mod:decode")))
    assert config.test.objective == f"{tmp_path / 'my' / 'obj.py'}:make"
    assert config.test.decode == "pkg.mod:decode"
    assert load_config(write_config(tmp_path, body % ("top5", "null"))).test.objective == "top5"


def test_registered_plugins_are_valid_config_values() -> None:
    """The config asks the registries: a threshold method or a data reader registered by a user
    is accepted by name, and an unknown name lists the registered ones."""
    import numpy as np

    from autoquant.config import CalibrationConfig, QuantizationConfig
    from autoquant.data import _base
    from autoquant.registry import DATA_READERS, THRESHOLD_METHODS

    with pytest.raises(ValueError, match="method\n.*must be one of max, percentile, kl"):
        QuantizationConfig(method="l1")
    with THRESHOLD_METHODS.registered("l1", THRESHOLD_METHODS.get("mse")):
        assert QuantizationConfig(method="l1").method == "l1"

    @_base.register_reader("tfrecord")
    class TfRecordReader(_base.DataReader):  # a user's reader: registering is enough for the config
        def _samples(self):
            yield _base.Sample({"input": np.zeros((1, 4, 4), np.float32)})

        def _count(self) -> int:
            return 1

    try:
        assert CalibrationConfig(source="x", format="tfrecord").format == "tfrecord"
    finally:
        DATA_READERS.remove("tfrecord")
    with pytest.raises(ValueError, match="must be one of auto, "):
        CalibrationConfig(source="x", format="tfrecord")


def test_unknown_objective_is_one_line_naming_the_registered_ones(tmp_path: Path) -> None:
    path = write_config(tmp_path, "model: {path: m}\ncalibration: {source: x}\ntest:\n  objective: top3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"{path}:4: test.objective: must be auto, a registered objective (agreement, cosine, top1, top5, "
        "map) or your own as module:function or path/file.py:function, got 'top3'"
    )
