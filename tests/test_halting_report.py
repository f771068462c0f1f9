"""Halting artifacts of every run: halting.json (hops saved per position and split) and the heatmap PNG."""

from __future__ import annotations

import json

import pytest

import ponderlab
from ponderlab.core.halting_report import HEATMAP_FILE


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("halting_run") / "run"
    spec = {
        "task": {"name": "binary_copy", "length": 5, "train_size": 32, "validation_size": 8, "test_size": 12},
        "backbone": {"name": "lstm", "d_model": 8, "n_layers": 2},
        "halting": {"name": "graves", "max_hops": 3, "epsilon": 0.1},
        "training": {"steps": 2, "batch_size": 8, "eval_every": 2, "num_threads": 1},
    }
    results = ponderlab.run(spec, output_dir=out)
    return out, results


def test_halting_json_reports_hops_saved_per_position_and_split(run_dir):
    out, results = run_dir
    halting = json.loads((out / "halting.json").read_text())
    assert halting["strategy"] == "graves" and halting["scope"] == "layer"
    assert halting["hop_cap"] == 3 and halting["layer_cap"] == 6 and halting["n_sites"] == 2
    for split in ("validation", "test"):
        entry = halting[split]
        assert entry["mean_hops"] == pytest.approx(results[f"{split}/mean_hops"])
        assert entry["mean_hops_saved"] == pytest.approx(3 - results[f"{split}/mean_hops"])
        assert entry["mean_layers_saved"] == pytest.approx(6 - results[f"{split}/mean_layers"])
        means, saved = entry["position_mean_hops"], entry["position_hops_saved"]
        assert len(means) == 12 == len(saved)  # EOS x*5 GEN x*5
        assert all(s == pytest.approx(3 - m) for m, s in zip(means, saved, strict=True))
        assert sum(entry["hop_histogram"].values()) > 0
    heatmap = halting["heatmap"]
    assert heatmap["file"] == HEATMAP_FILE
    assert len(heatmap["hops"]) == 12 and all(len(row) == 12 for row in heatmap["hops"])


def test_heatmap_png_is_written(run_dir):
    out, _ = run_dir
    data = (out / HEATMAP_FILE).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
