"""quantization.bias_correction as a search parameter: in the full space, out of the fingerprint
at its default (the stored fingerprint of a study written by autoquant 0.1.0 still matches), in it
when set."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import autoquant
from autoquant.engine.graph import prepare_model
from autoquant.search import fingerprint_inputs, load_space

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "previous_version_study"


def _stored_fingerprint() -> dict[str, str]:
    with sqlite3.connect(f"file:{FIXTURE / 'study.db'}?mode=ro", uri=True) as db:
        (value,) = db.execute(
            "SELECT value_json FROM study_user_attributes WHERE key = 'fingerprint'"
        ).fetchone()
    return json.loads(value)


def test_full_space_samples_bias_correction() -> None:
    space = load_space("full")
    assert space.parameters["bias_correction"].choices == [False, True]
    base = autoquant.load_config(FIXTURE / "config.yaml").quantization
    assert space.apply({"bias_correction": True}, base).bias_correction is True
    assert "bias_correction" not in load_space("fast").parameters


def test_fingerprint_unchanged_at_default_and_changed_when_set(tmp_path: Path) -> None:
    config = autoquant.load_config(FIXTURE / "config.yaml").replace(calibration={"cache_dir": tmp_path})
    graph = prepare_model(config.model.path, tmp_path)
    space = load_space("full")
    mine = fingerprint_inputs(config, graph, space)
    stored = _stored_fingerprint()
    assert {k: mine[k] for k in ("calibration", "quantization", "search")} == {
        k: stored[k] for k in ("calibration", "quantization", "search")
    }
    on = config.replace(quantization={"bias_correction": True})
    assert fingerprint_inputs(on, graph, space)["quantization"] != mine["quantization"]
    fewer = config.replace(calibration={"bias_correction_samples": 16})
    assert fingerprint_inputs(fewer, graph, space)["calibration"] != mine["calibration"]
