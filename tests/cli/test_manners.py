"""The command line's manners, through the real CLI: --verbose and --quiet on either side of the
command, help that wraps and shows flags without a value, long node lists cut short, OpenCV's
native log kept quiet and the study named as the reference config says."""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.cli.test_faults import _study, run
from tests.helpers import DIGITS, ROOT

pytestmark = pytest.mark.integration  # every test here starts a process


def test_verbose_and_quiet_on_either_side_of_the_command(tmp_path: Path) -> None:
    # --verbose: the traceback behind a one-line error, which every error line offers
    (tmp_path / "model.onnx").write_bytes(b"\x0a\x03not a model")
    bad = _study(tmp_path, model={"path": str(tmp_path / "model.onnx")})
    plain = run(tmp_path, "check", str(bad))
    assert plain.returncode == 2 and "Traceback" not in plain.stderr, plain.stderr
    for args in (
        ("--verbose", "check", str(bad)),
        ("check", str(bad), "--verbose"),
        ("check", str(bad), "-v"),
    ):
        result = run(tmp_path, *args)
        assert result.returncode == 2 and "Traceback" in result.stderr, (args, result.stderr)
        assert result.stderr.splitlines()[-1].startswith("autoquant: error:"), result.stderr
    # --quiet: no INFO lines (the second quantize reports its statistics cache hit at INFO)
    config = _study(tmp_path)
    assert run(tmp_path, "quantize", str(config)).returncode == 0
    loud = run(tmp_path, "quantize", str(config))
    assert loud.returncode == 0 and "INFO:" in loud.stderr, loud.stderr
    for args in (("-q", "quantize", str(config)), ("quantize", str(config), "--quiet")):
        result = run(tmp_path, *args)
        assert result.returncode == 0 and "INFO:" not in result.stderr, (args, result.stderr)


def test_help_shows_flags_without_a_value_and_the_config_as_config(tmp_path: Path) -> None:
    for args in (("--help",), ("tune", "--help"), ("serve", "--help"), ("quantize", "--help")):
        result = run(tmp_path, *args, env={"COLUMNS": "120"})
        assert result.returncode == 0, result.stderr
        assert "<bool>" not in result.stdout, result.stdout
        assert "{config}" not in result.stdout
    usage = run(tmp_path, "tune", "--help").stdout
    assert re.search(r"Usage: .* tune \[OPTIONS\] CONFIG\s*$", usage, re.MULTILINE), usage
    for flag in ("--fresh", "--verbose", "--quiet"):
        assert flag in usage


def test_help_wraps_to_the_terminal(tmp_path: Path) -> None:
    """Each command's description fills the width; no line ends early where a docstring broke."""
    for columns in (60, 160):
        result = run(tmp_path, "--help", env={"COLUMNS": str(columns)})
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= columns
        # tune's description: at 160 columns one line; at 60 no line shorter than it need be
        start = next(i for i, line in enumerate(lines) if re.match(r"│ tune\s", line))
        block = [lines[start]]
        for line in lines[start + 1 :]:
            if not re.match(r"│\s{5,}\S", line):
                break
            block.append(line)
        text = " ".join(line.strip("│ ").removeprefix("tune").strip() for line in block)
        assert "joins it with the workers" in text, text
        if columns == 160:
            assert len(block) == 1, block
        for line, following in itertools.pairwise(block):
            next_word = following.strip("│ ").split()[0]
            assert len(line.rstrip("│ ")) + 1 + len(next_word) > columns - 4, (line, following)


def test_corrupt_png_prints_no_opencv_line(tmp_path: Path) -> None:
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        cv2.imwrite(str(images / f"{i}.png"), np.full((32, 32), 60 * i, np.uint8))
    (images / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    config = _study(
        tmp_path,
        calibration={"source": str(images), "batch_size": 2, "data_preprocess_str": "gray=True;layout=NCHW"},
    )
    for command in ("check", "quantize"):
        result = run(tmp_path, command, str(config))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("autoquant: error:") and "3.png" in lines[0], lines
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    verbose = run(tmp_path, "check", str(config), "--verbose")  # OpenCV's own words stay for --verbose
    assert verbose.stderr.splitlines()[-1].startswith("autoquant: error:")
    assert len(verbose.stderr.splitlines()) > 1, verbose.stderr


def _many_fp32_nodes(tmp_path: Path, n_trials: int) -> tuple[Path, list[str]]:
    model = onnx.load(str(DIGITS / "model.onnx"))
    names = [node.name for node in model.graph.node if node.op_type in ("Conv", "Gemm")]
    config = _study(
        tmp_path,
        quantization={"nodes_to_exclude": names},
        search={"mode": "fast", "accept_int8_decay": 1.0, "n_trials": n_trials},
    )
    return config, names


def _assert_cut_short(line: str, names: list[str], listing: Path) -> None:
    written = listing.read_text().split()
    assert sorted(written) == sorted(names)
    shown = [name for name in names if name in line]
    assert 0 < len(shown) < len(names), line
    assert f"+{len(names) - len(shown)} more" in line, line
    assert str(listing) in line, line


def test_quantize_cuts_a_long_node_list_short(tmp_path: Path) -> None:
    config, names = _many_fp32_nodes(tmp_path, 1)
    result = run(tmp_path, "quantize", str(config))
    assert result.returncode == 0, result.stderr
    cell = result.stdout[result.stdout.index("FP32 nodes") : result.stdout.index("INT8 kernels")]
    row = " ".join(cell.replace("│", " ").split())  # the table's cell, over however many lines
    _assert_cut_short(row, names, tmp_path / "out" / "fp32_nodes.txt")


@pytest.mark.slow
def test_tune_cuts_the_best_line_short_and_names_the_study_after_the_output_folder(tmp_path: Path) -> None:
    config, names = _many_fp32_nodes(tmp_path, 1)
    result = run(tmp_path, "tune", str(config))
    assert result.returncode == 0, result.stderr
    best = result.stdout[result.stdout.index("best: trial") :].split("\nlatency at batch 1")[0]
    _assert_cut_short(best.replace("\n", " "), names, tmp_path / "out" / "fp32_nodes.txt")
    assert len(best.splitlines()) <= 2, best
    # the study (and MLflow's experiment) is named after the output folder, not the config file
    # (study.yaml), and the reference config says so
    assert "study out:" in result.stdout and "study study" not in result.stdout
    reference = (ROOT / "configs" / "reference.yaml").read_text()
    comment = next(line for line in reference.splitlines() if line.strip().startswith("study_name:"))
    assert "output folder" in comment and "config file name" not in comment, comment
