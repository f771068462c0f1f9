"""ACT study with power: learned halting (Graves ACT) vs. random halting at equal mean hops.

    python examples/act_study/reproduce.py                 # pilot search, runs, analysis, table
    python examples/act_study/reproduce.py --report-only   # re-draw the table from finished runs
    python examples/act_study/reproduce.py --seeds 3 --jobs 1

Steps (each skipped when its output exists, so the command resumes where it stopped):

1. `ponderlab tune` of pilot_tune.yaml and pilot_parity8.yaml (graves only, lr grid); the best
   lr of each task (validation exact match) is used for every arm of that task.
2. Per task and seed: `graves`, then `random` (two-point) with mean hops = that graves run's test
   mean hops over all tokens (so each random run is paired with one graves run); `none` and
   `constant` for the first `reference_seeds` seeds. Every run is `nice -n 10 ponderlab run`
   with one torch thread, `--jobs` at a time (default 2); CPU seconds are measured per run.
3. analyze.py re-evaluates each run's test split (per-example mean hops, solved, difficulty).
4. docs/results/act_study/table.md, summary.json and act_vs_random.png: exact match with 95%
   t-intervals over seeds, paired and Welch t-tests of graves vs. random, and the Spearman
   correlation of an example's hops with its difficulty.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
LOCK = threading.Lock()


def log(message: str) -> None:
    with LOCK:
        print(time.strftime("%H:%M:%S"), message, flush=True)


def run_cli(args: list[str], out: Path) -> dict:
    """Run `ponderlab ...` niced, return wall and CPU seconds of the child (os.wait4)."""
    started = time.perf_counter()
    logfile = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as handle:
        proc = subprocess.Popen(["nice", "-n", "10", "ponderlab", *args], stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"ponderlab {' '.join(args)} failed ({proc.returncode}); see {logfile}")
    return {"wall_seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1)}


# ---------------------------------------------------------------- step 1: pilot search


def pilot_files(study: dict) -> list[str]:
    return list(dict.fromkeys([*study.get("pilots", []), *(t["pilot"] for t in study["tasks"].values())]))


def pilot(study: dict, runs: Path) -> dict:
    """Run (or resume) every pilot search; per task label the best trial's lr (validation exact match)."""
    trials, timings = {}, {}
    for name in pilot_files(study):
        spec_path = HERE / name
        spec = yaml.safe_load(spec_path.read_text())
        storage = Path(spec["tune"]["storage_path"]) / spec["name"]
        table = storage / "results.csv"
        timing_file = runs / f"pilot_{spec['name']}_timing.json"
        if not (table.exists() and all(r.get("status") != "unfinished" for r in csv.DictReader(table.open()))):
            args = ["tune", str(spec_path)] + (["--resume"] if storage.exists() else [])
            log(f"pilot: ponderlab {' '.join(args)}")
            timing_file.write_text(json.dumps(run_cli(args, runs / f"pilot_{spec['name']}")))
        trials[name] = list(csv.DictReader(table.open()))
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        timing["trial_seconds"] = round(sum(float(r.get("time_s") or 0) for r in trials[name]), 1)
        timings[name] = timing
    best: dict[str, dict] = {}
    for label, task in study["tasks"].items():
        mine = [r for r in trials[task["pilot"]] if task["name"] in r.get("task", "") and r.get("validation/exact_match")]
        if not mine:
            raise SystemExit(f"pilot: no finished trial for task {task['name']} in {task['pilot']}")
        top = max(mine, key=lambda r: float(r["validation/exact_match"]))
        best[label] = {"lr": float(top["training.lr"]), "validation_exact_match": float(top["validation/exact_match"])}
    return {"best": best, "trials": trials, "timings": timings}


def task_section(study: dict, label: str) -> dict:
    task = study["tasks"][label]
    spec = yaml.safe_load((HERE / task["pilot"]).read_text())
    sections = [t for t in spec["search"]["task"]["grid"] if t["name"] == task["name"]]
    if len(sections) != 1:
        raise SystemExit(f"{task['pilot']}: expected one task section named {task['name']}")
    return sections[0]


# ---------------------------------------------------------------- step 2: runs


def base_spec(study: dict) -> dict:
    """The pilots' shared sections (model and training; every pilot file uses the same)."""
    pilot_spec = yaml.safe_load((HERE / pilot_files(study)[0]).read_text())
    return {"training": pilot_spec["training"], "backbone": pilot_spec["backbone"]}


def compose(study: dict, base: dict, label: str, arm: str, seed: int, lr: float, mean_hops: float | None) -> dict:
    task = task_section(study, label)
    halting = dict(study["arms"][arm])
    if arm == "random":
        halting["mean_hops"] = round(mean_hops, 4)
    return {"name": f"act-{label}-{arm}-s{seed}", "seed": seed, "task": dict(task),
            "backbone": dict(base["backbone"]), "halting": halting,
            "training": {**base["training"], "lr": lr}}


def train(spec: dict, out: Path) -> dict | None:
    if (out / "results.json").exists():
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    spec_file = out.parent / f"{out.name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    args = ["run", str(spec_file), "--output-dir", str(out), "--no-progress"]
    if (out / "spec.yaml").exists():
        args.append("--resume")
    timing = run_cli(args, out)
    (out / "timing.json").write_text(json.dumps(timing))
    result = json.loads((out / "results.json").read_text())
    log(f"{spec['name']}: test exact {result['test/exact_match']:.3f} hops {result['test/mean_hops']:.2f} "
        f"({timing['cpu_seconds']:.0f} CPU s, {timing['wall_seconds']:.0f} s wall)")
    return timing


def run_all(study: dict, best: dict, runs: Path, seeds: int, reference_seeds: int, jobs: int) -> None:
    base = base_spec(study)

    def chain(label: str, seed: int) -> None:
        lr = best["best"][label]["lr"]
        graves_dir = runs / label / f"graves-s{seed}"
        train(compose(study, base, label, "graves", seed, lr, None), graves_dir)
        hops = json.loads((graves_dir / "results.json").read_text())["test/mean_hops"]
        train(compose(study, base, label, "random", seed, lr, hops), runs / label / f"random-s{seed}")

    def reference(label: str, arm: str, seed: int) -> None:
        train(compose(study, base, label, arm, seed, best["best"][label]["lr"], None), runs / label / f"{arm}-s{seed}")

    # graves -> random chains of every seed first (the comparison), then the reference arms
    work = [(chain, (label, seed)) for seed in range(seeds) for label in study["tasks"]]
    work += [(reference, (label, arm, seed)) for seed in range(reference_seeds)
             for arm in ("none", "constant") for label in study["tasks"]]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(fn, *args) for fn, args in work]
        errors = []
        for future in futures:
            try:
                future.result()
            except Exception as error:  # keep the other runs going; report at the end
                errors.append(str(error))
    for error in errors:
        log(f"error: {error}")


# ---------------------------------------------------------------- steps 3-4: analysis and table


def analysis(run_dir: Path, difficulty: str) -> dict:
    import torch
    from analyze import analyze_run

    cached = run_dir / "analysis.json"
    if cached.exists():
        return json.loads(cached.read_text())
    torch.set_num_threads(1)
    record = analyze_run(run_dir, difficulty)
    cached.write_text(json.dumps(record, indent=1))
    return json.loads(cached.read_text())  # per-difficulty keys as strings, as when cached


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and the half-width of its 95% t-interval (nan for fewer than 2 values), and sd."""
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * sd / math.sqrt(len(x))), sd


def fmt(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def report(study: dict, best: dict | None, runs: Path, out: Path) -> None:
    import numpy as np
    from scipy import stats

    out.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, dict[int, dict]]] = {}
    cpu_total, wall_total, n_runs = 0.0, 0.0, 0
    for label, task in study["tasks"].items():
        for arm in study["arms"]:
            for run_dir in sorted((runs / label).glob(f"{arm}-s*")):
                if not (run_dir / "results.json").exists():
                    continue
                seed = int(run_dir.name.rsplit("-s", 1)[1])
                record = analysis(run_dir, task["difficulty"])
                timing = json.loads((run_dir / "timing.json").read_text()) if (run_dir / "timing.json").exists() else {}
                record["timing"] = timing
                record["test_exact_match_trainer"] = json.loads((run_dir / "results.json").read_text())[
                    "test/exact_match"]
                cpu_total += timing.get("cpu_seconds", 0.0)
                wall_total += timing.get("wall_seconds", 0.0)
                n_runs += 1
                records.setdefault(label, {}).setdefault(arm, {})[seed] = record
    pilot_timing = best["timings"] if best else {}

    lines = ["# ACT study: learned halting vs. random halting at equal mean hops", "",
             "Generated by `python examples/act_study/reproduce.py` from the runs under runs/act_study/; "
             "do not edit by hand.", ""]
    if best:
        lines += ["Pilot searches (`ponderlab tune`, graves only, seed 0; one row per trial; the best lr of "
                  "each study task by validation exact match is used for every arm of that task):", "",
                  "| pilot | task | lr | validation exact match | test exact match | trial wall s |",
                  "|---|---|---:|---:|---:|---:|"]
        for name, rows in best["trials"].items():
            for r in rows:
                task = r.get("task", "").split(", train_size")[0] + ")"
                val, test = (f"{float(r[k]):.3f}" if r.get(k) else "-" for k in
                             ("validation/exact_match", "test/exact_match"))
                lines.append(f"| {name} | {task} | {r.get('training.lr', '')} | {val} | {test} | "
                             f"{r.get('time_s', '')} |")
        lines += ["", "Chosen: " + ", ".join(f"{k} lr {v['lr']:g}" for k, v in best["best"].items()) + ".", ""]
    lines += ["Test exact match over the 1000 test examples of each run (analyze.py, seeded evaluation), "
              "mean over seeds ± half-width of the 95% t-interval; mean hops over all tokens; rho = Spearman "
              "correlation, over a run's test examples, between an example's mean hops and its difficulty "
              "(reverse: n; parity: count of non-zero entries), hops at its scored positions (parity: the "
              "one query token) or over all its tokens, averaged over seeds ± 95% interval (- where the "
              "hops do not vary).", "",
              "| task | arm | seeds | exact match | per-seed exact match | mean hops (all tokens) | "
              "rho scored | rho all tokens |",
              "|---|---|---:|---:|---|---:|---:|---:|"]
    summary = {"runs": {}, "tests": {}, "pilot": best["best"] if best else None, "cpu_seconds_runs": round(cpu_total, 1),
               "wall_seconds_runs": round(wall_total, 1), "runs_counted": n_runs, "pilot_timing": pilot_timing}
    for label, arms in records.items():
        for arm, by_seed in arms.items():
            seeds = sorted(by_seed)
            acc = [by_seed[s]["accuracy"] for s in seeds]
            hops = [by_seed[s]["mean_hops_all_tokens"] for s in seeds]
            rhos = []
            for key in ("spearman_hops_difficulty", "spearman_all_tokens_difficulty"):
                rho = [by_seed[s][key] for s in seeds if by_seed[s][key] is not None and not math.isnan(by_seed[s][key])]
                rhos.append(fmt(*interval(rho)[:2], 2) if rho else "-")
            m, h, _ = interval(acc)
            hm, hh, _ = interval(hops)
            lines.append(f"| {label} | {arm} | {len(seeds)} | {fmt(m, h)} | "
                         + ", ".join(f"{a:.3f}" for a in acc) + f" | {fmt(hm, hh, 2)} | {rhos[0]} | {rhos[1]} |")
            summary["runs"].setdefault(label, {})[arm] = {
                str(s): {k: by_seed[s][k] for k in ("accuracy", "mean_hops", "mean_hops_all_tokens",
                                                    "spearman_hops_difficulty", "spearman_all_tokens_difficulty",
                                                    "per_difficulty", "timing",
                                                    "test_exact_match_trainer")} for s in seeds}
    lines += ["", "Learned (graves) vs. random at equal mean hops, per task: difference graves - random in "
              "exact match over the seeds where both finished (random seed s is matched to graves seed s's "
              "hops), paired t-test, Welch's unpaired t-test; the rho difference uses the task's `rho` "
              "column of study.yaml (parity: all tokens, as its one scored token always takes the same hops).", "",
              "| task | pairs | graves - random (95% CI) | paired t-test p | Welch p | "
              "graves rho - random rho (95% CI) |", "|---|---:|---:|---:|---:|---:|"]
    for label, arms in records.items():
        g, r = arms.get("graves", {}), arms.get("random", {})
        pairs = sorted(set(g) & set(r))
        if len(pairs) < 2:
            lines.append(f"| {label} | {len(pairs)} | - | - | - | - |")
            continue
        diff = [g[s]["accuracy"] - r[s]["accuracy"] for s in pairs]
        dm, dh, _ = interval(diff)
        paired = stats.ttest_rel([g[s]["accuracy"] for s in pairs], [r[s]["accuracy"] for s in pairs])
        welch = stats.ttest_ind([g[s]["accuracy"] for s in g], [r[s]["accuracy"] for s in r], equal_var=False)
        rkey = study["tasks"][label].get("rho", "spearman_hops_difficulty")
        rdiff = [g[s][rkey] - r[s][rkey] for s in pairs]
        rdiff = [x for x in rdiff if not math.isnan(x)]
        rdm, rdh, _ = interval(rdiff) if rdiff else (math.nan, math.nan, math.nan)
        pp = float(paired.pvalue) if not np.isnan(paired.pvalue) else math.nan
        wp = float(welch.pvalue) if not np.isnan(welch.pvalue) else math.nan
        lines.append(f"| {label} | {len(pairs)} | {fmt(dm, dh)} | {pp:.3g} | {wp:.3g} | {fmt(rdm, rdh, 2)} |")
        summary["tests"][label] = {"pairs": pairs, "diff_mean": dm, "diff_ci_half": dh, "paired_p": pp,
                                   "welch_p": wp, "rho_diff_mean": rdm, "rho_diff_ci_half": rdh}
    lines += ["", "Hops and exact match by difficulty (graves and random, mean over seeds):", ""]
    for label, arms in records.items():
        levels = sorted({int(k) for arm in arms.values() for rec in arm.values() for k in rec["per_difficulty"]})
        lines.append(f"| {label}: {study['tasks'][label]['difficulty']} | " + " | ".join(map(str, levels)) + " |")
        lines.append("|---|" + "---|" * len(levels))
        for arm in ("graves", "random", "none", "constant"):
            if arm not in arms:
                continue
            for key, what in (("mean_hops", "hops scored"), ("mean_hops_all_tokens", "hops all"),
                              ("accuracy", "exact")):
                if key != "accuracy" and arm in ("none", "constant"):
                    continue
                cells = []
                for level in levels:
                    vals = [rec["per_difficulty"][str(level)][key] for rec in arms[arm].values()
                            if str(level) in rec["per_difficulty"]]
                    vals = [v for v in vals if v is not None]
                    cells.append(f"{np.mean(vals):.2f}" if vals else "-")
                lines.append(f"| {arm} {what} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Budget: {n_runs} runs, {cpu_total / 60:.1f} CPU minutes of training "
              f"({wall_total / 60:.1f} min wall summed over runs; wall time is inflated by other jobs on "
              "the shared 2-core machine), plus the pilot searches ("
              + "; ".join(f"{k}: {v['trial_seconds']} s wall summed over its trials" for k, v in pilot_timing.items())
              + "; their CPU time is not measured: Ray's workers are not children of the command"
              + ") and the analysis passes.", ""]
    (out / "table.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=str))
    plot(records, study, out / "act_vs_random.png")
    log(f"wrote {out / 'table.md'} ({n_runs} runs)")


def plot(records: dict, study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(records)
    if not labels:
        return
    fig, axes = plt.subplots(2, len(labels), figsize=(5 * len(labels), 8), squeeze=False)
    colors = {"graves": "C0", "random": "C1", "none": "C2", "constant": "C3"}
    for col, label in enumerate(labels):
        ax = axes[0, col]
        for arm, by_seed in records[label].items():
            xs = [rec["mean_hops_all_tokens"] for rec in by_seed.values()]
            ys = [rec["accuracy"] for rec in by_seed.values()]
            ax.scatter(xs, ys, color=colors.get(arm), label=arm, alpha=0.7)
        ax.set_title(f"{label}: test exact match per seed")
        ax.set_xlabel("mean hops (all tokens)")
        ax.set_ylabel("exact match")
        ax.legend()
        ax = axes[1, col]
        for arm in ("graves", "random"):
            by_seed = records[label].get(arm, {})
            for i, rec in enumerate(by_seed.values()):
                levels = sorted(int(k) for k in rec["per_difficulty"])
                hops = [rec["per_difficulty"][str(v)]["mean_hops_all_tokens"] for v in levels]
                ax.plot(levels, hops, color=colors[arm], alpha=0.6, label=arm if i == 0 else None)
        ax.set_title(f"{label}: hops (all tokens) by {study['tasks'][label]['difficulty']}")
        ax.set_xlabel(study["tasks"][label]["difficulty"])
        ax.set_ylabel("mean hops")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    del np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(HERE / "study.yaml"))
    parser.add_argument("--runs", default="runs/act_study")
    parser.add_argument("--out", default="docs/results/act_study")
    parser.add_argument("--seeds", type=int, help="seeds of graves and random (default: study.yaml)")
    parser.add_argument("--reference-seeds", type=int, help="seeds of none and constant (default: study.yaml)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (1 thread each)")
    parser.add_argument("--report-only", action="store_true", help="no training: analysis and table only")
    args = parser.parse_args()
    study = yaml.safe_load(Path(args.study).read_text())
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    best = pilot(study, runs)
    if not args.report_only:
        run_all(study, best, runs, args.seeds or study["seeds"],
                args.reference_seeds if args.reference_seeds is not None else study["reference_seeds"], args.jobs)
    report(study, best, runs, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
