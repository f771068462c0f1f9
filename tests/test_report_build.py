"""`ponderlab report`: a report built from two tiny real runs matches their files; plots are PNGs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import ponderlab
from ponderlab.core.cli import main as cli_main
from ponderlab.core.plots import pareto_front
from ponderlab.core.report import RunRecord, collect_runs, label_runs, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_spec(backbone: dict, halting: dict) -> dict:
    return {
        "seed": 3,
        "task": {"name": "binary_copy", "length": 8, "train_size": 256, "validation_size": 24, "test_size": 40},
        "backbone": {"d_model": 16, "n_layers": 1, **backbone},
        "halting": halting,
        "training": {
            "steps": 16, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2,
            "eval_every": 8, "log_every": 4, "num_threads": 1,
        },
    }


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """A folder holding two finished runs (one with adaptive halting) and one unfinished run dir."""
    root = tmp_path_factory.mktemp("runs")
    ponderlab.run(
        tiny_spec({"name": "transformer", "n_heads": 2, "ffn_size": 32},
                  {"name": "graves", "max_hops": 3, "epsilon": 0.1, "halting_bias_init": -1.0}),
        output_dir=root / "sweep" / "trial_a" / "run",
    )
    ponderlab.run(tiny_spec({"name": "lstm"}, {"name": "none"}), output_dir=root / "sweep" / "trial_b")
    unfinished = root / "sweep" / "trial_c"
    unfinished.mkdir()
    (unfinished / "spec.yaml").write_text((root / "sweep" / "trial_b" / "spec.yaml").read_text())
    return root


@pytest.fixture(scope="module")
def built_report(two_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    written = write_report([two_runs], out, heatmap_examples=8)
    return out, written


def assert_valid_png(path: Path) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert len(data) > 1000, path
    assert data.startswith(PNG_SIGNATURE), path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0.01, f"{path} is a blank image"


def test_report_finds_finished_runs_only(built_report, two_runs):
    _, written = built_report
    found = sorted(str(r.path.relative_to(two_runs.resolve())) for r in written["runs"])
    assert found == ["sweep/trial_a/run", "sweep/trial_b"]
    assert [p.name for p in written["unfinished"]] == ["trial_c"]


def test_csv_table_matches_results_files(built_report):
    out, _ = built_report
    with open(out / "runs.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:
        results = json.loads((Path(row["path"]) / "results.json").read_text())
        assert row["task"] == results["task"] == "binary_copy"
        assert row["backbone"] == results["backbone"]
        assert row["halting"] == results["halting"]
        assert row["scope"] == results["scope"]
        assert int(row["params"]) == results["model/parameters"]
        assert int(row["steps"]) == results["train/steps"] == 16
        for column, key in [
            ("test exact match", "test/exact_match"),
            ("test token acc", "test/token_accuracy"),
            ("mean hops", "test/mean_hops"),
            ("ponder cost", "test/ponder_cost"),
            ("s/step", "time/seconds_per_step"),
        ]:
            assert math.isclose(float(row[column]), results[key], rel_tol=1e-12), column
    # lstm sorts before transformer; the no-halting run takes exactly one hop and no ponder cost
    assert [r["backbone"] for r in rows] == ["lstm", "transformer"]
    assert float(rows[0]["mean hops"]) == 1.0 and float(rows[0]["ponder cost"]) == 0.0
    assert 1.0 <= float(rows[1]["mean hops"]) <= 3.0 and float(rows[1]["ponder cost"]) > 0


def test_markdown_table_shows_rounded_results(built_report):
    out, written = built_report
    text = (out / "report.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| binary_copy |")]
    assert len(lines) == 2
    for run, line in zip(written["runs"], lines, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        results = run.results
        assert cells[1] == results["backbone"] and cells[2] == results["halting"]
        assert cells[4] == f"{results['model/parameters']:,}"
        assert cells[5] == f"{results['test/exact_match']:.3f}"
        assert cells[6] == f"{results['test/token_accuracy']:.3f}"
        assert cells[7] == f"{results['test/mean_hops']:.3f}"
        assert cells[8] == f"{results['test/ponder_cost']:.3f}"
    assert "1 unfinished run dir(s) skipped" in text


def test_every_plot_is_a_valid_png_linked_from_the_report(built_report):
    out, written = built_report
    pngs = sorted(p.name for p in written["files"] if p.suffix == ".png")
    assert pngs == sorted([
        "learning_curves.png", "accuracy_vs_hops.png", "hops_by_position.png",
        "hop_histogram.png", "hop_heatmap_binary_copy.png",
    ])
    text = (out / "report.md").read_text()
    for name in pngs:
        assert_valid_png(out / name)
        assert f"]({name})" in text
    assert written["warnings"] == []


def test_report_cli_writes_the_same_table(two_runs, tmp_path, capsys):
    code = cli_main(["report", str(two_runs), "--out", str(tmp_path / "r"), "--no-plots"])
    assert code == 0
    assert (tmp_path / "r" / "runs.csv").is_file()
    assert not list((tmp_path / "r").glob("*.png"))
    assert "| binary_copy | lstm | none |" in capsys.readouterr().out


def test_report_without_runs_is_one_clear_error(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no finished runs" in capsys.readouterr().err
    assert cli_main(["report", str(tmp_path / "missing")]) == 2


def test_report_lists_eval_results_beside_the_run(two_runs, tmp_path):
    import shutil

    # work on a copy of the run so that the module fixture stays untouched
    shutil.copytree(two_runs / "sweep" / "trial_b", tmp_path / "copy")
    assert cli_main(["eval", str(tmp_path / "copy"), "task.test_length=10", "--label", "long"]) == 0
    write_report([tmp_path / "copy"], tmp_path / "r", plots=False)
    evaluation = json.loads((tmp_path / "copy" / "eval_test_long.json").read_text())
    with open(tmp_path / "r" / "evals.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["overrides"] == "task.test_length=10"
    assert float(row["exact_match"]) == evaluation["results"]["test/exact_match"]
    assert float(row["mean_hops"]) == 1.0
    assert "## Evaluations" in (tmp_path / "r" / "report.md").read_text()


def record(task: dict, backbone: str = "lstm", halting: str = "none", lr: float = 1e-3) -> RunRecord:
    spec = {"task": task, "backbone": {"name": backbone}, "halting": {"name": halting}, "training": {"lr": lr}}
    results = {"task": task["name"], "backbone": backbone, "halting": halting, "scope": "layer"}
    return RunRecord(path=Path(f"/r/{task['name']}-{task.get('shift')}-{backbone}-{lr}"), spec=spec, results=results)


def test_labels_show_only_the_options_that_differ():
    runs = [
        record({"name": "ca1d", "shift": 1, "width": 20}),
        record({"name": "ca1d", "shift": 2, "width": 20}, lr=1e-3),
        record({"name": "ca1d", "shift": 2, "width": 20}, lr=3e-3),
        record({"name": "binary_copy", "length": 8}),
    ]
    label_runs(runs)
    assert [r.task_label for r in runs] == ["ca1d shift=1", "ca1d shift=2", "ca1d shift=2", "binary_copy"]
    assert [r.variant for r in runs] == ["", "training.lr=0.001", "training.lr=0.003", ""]


def test_pareto_front_by_hand():
    points = [(1.0, 0.5), (2.0, 0.9), (1.5, 0.4), (3.0, 0.9), (1.0, 0.6), (2.5, 0.95)]
    assert pareto_front(points) == [(1.0, 0.6), (2.0, 0.9), (2.5, 0.95)]


def test_collect_runs_reads_a_single_run_dir(two_runs):
    runs, unfinished = collect_runs([two_runs / "sweep" / "trial_b"])
    assert len(runs) == 1 and unfinished == []
    assert runs[0].name == "trial_b"
    steps, losses = runs[0].curve("train", "loss")
    assert steps == [4, 8, 12, 16] and all(math.isfinite(v) for v in losses)


def test_heatmap_hops_from_the_checkpoint_match_the_stored_ones(two_runs, tmp_path):
    """Without per-example hops in halting.json the report recomputes them from the checkpoint."""
    import shutil

    from ponderlab.core.report import hop_matrices, load_run, stored_hop_matrix

    source = two_runs / "sweep" / "trial_a" / "run"
    stored = stored_hop_matrix(load_run(source))
    assert stored is not None and stored.shape[0] == 32
    shutil.copytree(source, tmp_path / "run")
    halting = json.loads((tmp_path / "run" / "halting.json").read_text())
    halting.pop("heatmap", None)
    (tmp_path / "run" / "halting.json").write_text(json.dumps(halting))
    run = load_run(tmp_path / "run")
    assert stored_hop_matrix(run) is None
    matrices, warnings = hop_matrices([run], examples=12)
    assert warnings == []
    computed, scored = matrices[id(run)]
    assert computed.shape == (12, stored.shape[1])
    assert computed == pytest.approx(stored[:12], abs=1e-4, nan_ok=True)
    # copy of 8 bits: EOS x GEN x (length 18); GEN (position 9) predicts the first target bit
    assert scored.shape == (12, 18)
    assert not scored[:, :9].any() and scored[:, 9:17].all() and not scored[:, 17].any()
    # stored hops come with the scored positions rebuilt from the task data alone
    original = load_run(source)
    (stored_again, stored_scored), = hop_matrices([original], examples=12)[0].values()
    assert stored_again == pytest.approx(stored[:12], nan_ok=True)
    assert (stored_scored == scored).all()


def test_pareto_view_against_layer_applications(two_runs, tmp_path, monkeypatch):
    """`--pareto-x layers` puts each run at test/mean_layers (a depth exit at 1.5 of 3 layers
    and a 1-layer core iterated 2.5 times), not at its hops."""
    from ponderlab.core import plots

    runs = [record({"name": "parity", "size": 4}, halting=h) for h in ("calm", "ut")]
    for run, (hops, layers, acc) in zip(runs, [(1.5, 1.5, 0.7), (2.5, 2.5 * 2, 0.9)], strict=True):
        run.results.update({"test/mean_hops": hops, "test/mean_layers": layers,
                            "test/token_accuracy": acc, "test/exact_match": acc})
    runs.append(record({"name": "parity", "size": 4}, halting="none"))  # no mean_layers: left out
    runs[-1].results.update({"test/mean_hops": 1.0, "test/token_accuracy": 0.5})
    label_runs(runs)
    seen = {}

    def keep(plt, fig, *args, **kwargs):
        seen["points"] = sorted(tuple(p) for c in fig.axes[0].collections for p in c.get_offsets())
        seen["xlabel"] = fig.axes[0].get_xlabel()
        plt.close(fig)

    monkeypatch.setattr(plots, "_finish", keep)
    assert plots.plot_accuracy_vs_hops(runs, tmp_path / "x.png", x_axis="layers")[0][0].startswith(
        "Accuracy vs mean layer applications")
    assert seen["points"] == [(1.5, 0.7), (5.0, 0.9)]
    assert "layer applications" in seen["xlabel"]
    plots.plot_accuracy_vs_hops(runs, tmp_path / "x.png")
    assert seen["points"] == [(1.0, 0.5), (1.5, 0.7), (2.5, 0.9)]

    monkeypatch.undo()
    out = tmp_path / "r"
    assert cli_main(["report", str(two_runs), "--out", str(out), "--heatmap-examples", "0",
                     "--pareto-x", "hops", "layers"]) == 0
    for name in ("accuracy_vs_hops.png", "accuracy_vs_layers.png"):
        assert_valid_png(out / name)
        assert f"]({name})" in (out / "report.md").read_text()


def test_pareto_view_averages_the_seeds_of_a_configuration(tmp_path, monkeypatch):
    """`seeds="mean"`: runs differing only in seed become one point at their mean, with bars
    from the lowest to the highest seed; a configuration with one seed has no bars."""
    from ponderlab.core import plots

    runs = []
    for halting, values in (("calm", [(1.0, 0.6), (2.0, 0.8)]), ("ut", [(3.0, 0.9)])):
        for seed, (layers, acc) in enumerate(values):
            run = record({"name": "parity", "size": 4}, halting=halting)
            run.spec["seed"] = seed
            run.results.update({"test/mean_layers": layers, "test/token_accuracy": acc, "test/exact_match": acc})
            runs.append(run)
    label_runs(runs)
    assert [r.variant for r, _ in plots.seed_groups(runs)] == ["", ""]
    assert [len(members) for _, members in plots.seed_groups(runs)] == [2, 1]
    seen = {}

    from matplotlib.collections import LineCollection, PathCollection

    def keep(plt, fig, encoding, *args, **kwargs):
        ax = fig.axes[0]
        seen["points"] = sorted(tuple(p) for c in ax.collections if isinstance(c, PathCollection)
                                for p in c.get_offsets())
        seen["bars"] = [tuple(tuple(map(tuple, seg.tolist())) for seg in c.get_segments()) for c in ax.collections
                        if isinstance(c, LineCollection)]
        seen["legend"] = [label for _, labels in encoding.legend_groups("marker") for label in labels]
        plt.close(fig)

    monkeypatch.setattr(plots, "_finish", keep)
    title = plots.plot_accuracy_vs_hops(runs, tmp_path / "x.png", x_axis="layers", seeds="mean")[0][0]
    assert "mean over seeds" in title
    assert [tuple(round(v, 6) for v in p) for p in seen["points"]] == [(1.5, 0.7), (3.0, 0.9)]
    # one x bar (1.0 to 2.0 at accuracy 0.7) and one y bar (0.6 to 0.8 at 1.5 layers), for calm only
    assert sorted(seen["bars"]) == [(((1.0, 0.7), (2.0, 0.7)),), (((1.5, 0.6), (1.5, 0.8)),)]
    assert seen["legend"] == ["backbone: lstm", "halting: calm/layer", "halting: ut/layer"]
    plots.plot_accuracy_vs_hops(runs, tmp_path / "x.png", x_axis="layers")  # a point and an entry per run
    assert len(seen["points"]) == 3 and seen["bars"] == []
    assert seen["legend"] == ["lstm calm/layer [seed=0]", "lstm calm/layer [seed=1]", "lstm ut/layer"]
