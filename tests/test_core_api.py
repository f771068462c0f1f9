"""The Python API: the README snippet runs as written, and the API agrees with the CLI path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import ponderlab

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    text = README.read_text()
    match = re.search(r"<!-- api-snippet -->\s*```python\n(.*?)```\s*<!-- /api-snippet -->", text, re.S)
    assert match, "README lost its api-snippet block"
    return match.group(1)


def test_readme_api_snippet_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.logits.shape == (8, 12, 128)
    assert out.stats.hops.shape == (8, 12)
    assert torch.all(out.stats.hops == 2.0)  # bias 1.0, eps 0.1: exactly two hops at init
    results = namespace["results"]
    saved = json.loads((tmp_path / "runs" / "api-example" / "results.json").read_text())
    assert results == saved
    assert "mean hops per token at init: 2.0" in capsys.readouterr().out


def test_build_model_from_spec_and_kwargs_agree():
    spec = {
        "seed": 1,
        "task": {"name": "binary_copy", "length": 4},
        "backbone": {"name": "lstm", "d_model": 8, "n_layers": 1},
        "halting": {"name": "constant", "hops": 3},
    }
    from_spec = ponderlab.build_model(spec)
    from_kwargs = ponderlab.build_model(backbone=spec["backbone"], halting=spec["halting"], vocab_size=128, seed=1)
    for (name, a), (_, b) in zip(from_spec.state_dict().items(), from_kwargs.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    out = from_kwargs(torch.zeros(2, 5, dtype=torch.long))
    assert torch.all(out.stats.hops == 3) and torch.all(out.stats.layers == 3)


def test_build_model_rejects_missing_vocab_and_bad_scope():
    with pytest.raises(ValueError, match="vocab_size"):
        ponderlab.build_model(backbone={"name": "lstm"})
    with pytest.raises(Exception, match="scope"):
        ponderlab.build_model(backbone={"name": "lstm"}, halting={"name": "none", "scope": "sideways"},
                              vocab_size=4)


def test_build_task_and_evaluate_untrained_model_is_near_chance():
    task = ponderlab.build_task(name="binary_copy", length=8, train_size=64, validation_size=16, test_size=64)
    model = ponderlab.build_model(backbone={"name": "lstm", "d_model": 8, "n_layers": 1}, vocab_size=task.vocab_size)
    metrics = ponderlab.evaluate(model, task, split="test")
    assert metrics["examples"] == 64
    assert metrics["exact_match"] < 0.5
    assert metrics["mean_hops"] == 1.0
