"""bench/compare.py --quick: the side-by-side comparison runs on digits and writes a sound table,
into its output folder only."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoquant.hardware import host_isa
from tests.helpers import ROOT

pytestmark = pytest.mark.integration  # every test here starts a process

QUICK = ("ort minmax per-tensor", "nncf quantize", "autoquant quantize", "autoquant tune fast")


def test_quick_comparison(tmp_path: Path) -> None:
    out, cwd, home = tmp_path / "out", tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench/compare.py"), "--quick", "--output", str(out)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # nothing outside the output folder, and only the two result files inside it
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]
    assert not any(cwd.iterdir()) and not any(home.iterdir())
    # one line for the model, one per contender, one for the file written
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 + len(QUICK), result.stdout
    assert lines[0].startswith("digits: 200 calibration and 500 test samples, top1, budget 0.005")

    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["contender"] for r in rows] == list(QUICK)
    for row in rows:
        name = row["contender"]
        assert not any(n.startswith(("failed", "not ")) for n in row["notes"]), (name, row["notes"])
        assert math.isfinite(row["decay"]) and math.isfinite(row["score"]), name
        assert math.isclose(row["decay"], 0.994 - row["score"], abs_tol=1e-9), name  # FP32 top-1 0.994
        assert row["within_budget"] == (row["decay"] <= 0.005), name
        assert row["total_layers"] == 10, name  # 9 Conv + 1 Gemm
        assert 0 <= row["int8_kernels"] <= row["int8_layers"] <= row["total_layers"], name
        assert row["seconds"] > 0 and row["peak_rss_mb"] > 50 and row["trials"] >= 1, name
        assert row["speedup"] > 0 and row["fp32_ms"] > 0 and row["int8_ms"] > 0, name
        if row["within_budget"] and name != "autoquant tune fast":
            assert row["time_to_budget_s"] == row["seconds"], name
        if not row["within_budget"]:
            assert row["time_to_budget_s"] is None, name
    tune = rows[-1]
    assert tune["trials"] >= 1 and tune["within_budget"]  # fast mode on digits meets 0.5 % (README)
    assert 0 < tune["time_to_budget_s"] <= tune["seconds"]
    assert rows[2]["int8_layers"] == 10  # autoquant quantizes every compute layer of digits

    text = (out / "results.md").read_text()
    assert host_isa().label in text
    for name in QUICK:
        assert f"| digits (0.005) | {name} |" in text
    assert "## Targets of issue 12" in text
