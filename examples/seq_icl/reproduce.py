"""seq_icl at CPU scale, one command: search, write back, seeds, table, curves.

    python examples/seq_icl/reproduce.py [--only GLOB ...] [--skip-search] [--seeds N] [--parallel N]
                                         [--output-dir runs/seq_icl] [--table-only] [--dry-run]
                                         [--extra NAME ...] [--adopt NAME ...]

For every example spec `<task>_<backbone>.yaml` in this folder (a row of seq_icl's
table; `--only` picks rows by glob on the stem, e.g. `--only 'associative_recall_*'`):

1. search: a small `ponderlab tune` search (SEARCH below: the settings every trial
   of that task shares, and the searched keys, which may include `seed`) on the row's
   spec, 1 CPU per trial, --parallel trials at a time, into OUT/search/<row>/. The
   process-tree CPU seconds of the search go to OUT/search/<row>.budget.json.
2. write back: the best setting becomes the row's example spec (seed 0), with a header
   saying where it came from. A setting is judged by the mean over its seeds of the
   validation exact match, ties broken by its worst seed (seqicl_tools.settings); a
   search without a seed axis has one seed per setting.
3. seeds: the written-back spec with seeds 0..N-1 (`ponderlab run SPEC seed=S`) into
   OUT/seeds/<row>/seed<S>/. A seed that the search already trained with the same
   spec is copied from its trial, not trained again.
4. table: docs/results/seq_icl/table.md and table.json (mean and spread of test
   exact match over the seeds beside seq_icl's number, the settings searched) and, for
   rows below their target, the learning curves docs/results/seq_icl/curve_<row>.png;
   every search's own table with its settings over seeds, docs/results/seq_icl/search_<row>.md.

Follow-ups: `--extra NAME` runs examples/seq_icl/tune_NAME.yaml into OUT/tried/NAME (CPU time
recorded); `--only ROW --adopt NAME [--adopt NAME2]` makes the follow-ups' one setting (their
seeds pooled) the row's spec and seeds if it beats the row's seeds by the same rule (adopt()).

Everything is resumable: a search whose results.csv lists only completed trials is
not searched again (an interrupted one is continued with `ponderlab tune DIR --resume`),
a seed whose run directory holds results.json is not trained again. `--skip-search`
uses the example spec as it is (for rows never searched, or to add seeds). With `--only`,
the table is rewritten for the named rows only: the other rows are kept from table.json
(`--table-only --only ROW` regenerates one row from a partial copy of runs/; a named row
with no runs in OUT is kept too, with a notice). Every
training process runs under `nice -n 10` (`--nice`) with one torch thread.

This file runs the steps; next to it, seqicl_study.py holds what is compared and searched,
seqicl_adopt.py the `--adopt` rule, seqicl_table.py the table and pages, seqicl_tools.py timing,
search results over seeds and curves.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# the seqicl_* modules next to this script (examples/ is not a package)
import seqicl_tools  # noqa: E402
from seqicl_adopt import adopt  # noqa: E402
from seqicl_study import ORDER, SEARCH, TUNE  # noqa: E402
from seqicl_table import (  # noqa: E402
    carry_search,
    previous_rows,
    summarize,
    tried_cpu_seconds,
    with_recipe,
    write_search_pages,
    write_table,
)
from seqicl_tools import (  # noqa: E402
    CommandFailed,
    comparable,
    describe,
    read_search,
    row_info,
    settings,
    timed,
)

PARALLEL = 1  # training processes at once (searches: tune.max_concurrent_trials); --parallel


def set_dotted(spec: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def search_spec(spec_path: Path, out: Path, plans: dict | None = None) -> dict:
    """The tune spec of a row: its example spec, the task's shared settings, the search (`plans`
    by task: SEARCH unless given, e.g. SEARCH_WIDTH_64 for a row in width64/)."""
    task, backbone = row_info(spec_path)
    base = yaml.safe_load(spec_path.read_text())
    plan = (plans or SEARCH)[task]
    settings = {**plan["set"], **plan.get("by_backbone", {}).get(backbone, {}).get("set", {})}
    for key, value in settings.items():
        set_dotted(base, key, value)
    base["seed"] = 0
    base["training"]["num_threads"] = 1
    base["training"]["device"] = "cpu"
    base["search"] = copy.deepcopy(plan.get("by_backbone", {}).get(backbone, {}).get("search", plan["search"]))
    base["tune"] = {**TUNE, "max_concurrent_trials": PARALLEL, "storage_path": str(out / "search"),
                    "name": spec_path.stem}
    return base


def search_done(directory: Path) -> bool:
    if not (directory / "results.csv").exists():
        return False
    rows = read_search(directory)
    return bool(rows) and all(r["status"] in ("completed", "stopped", "error") for r in rows)


def timed_search(command: list[str], budget_file: Path, dry_run: bool) -> None:
    """Run a `ponderlab tune` command and add its CPU and wall seconds to budget_file, also when
    it fails or is interrupted (then exit naming how to continue)."""
    failed = None
    try:
        timing = timed(command, {**os.environ, "OMP_NUM_THREADS": "1"})
    except CommandFailed as error:
        failed, timing = error, error.timing
    if not dry_run:
        add_budget(budget_file, timing)
    if failed:
        raise SystemExit(f"{' '.join(command)} exited with {failed.returncode}; the {timing['cpu_seconds']} CPU-s it "
                         f"used are added to {budget_file}; the same command continues the search")


def add_budget(budget_file: Path, timing: dict) -> None:
    earlier = json.loads(budget_file.read_text()) if budget_file.exists() else {"cpu_seconds": 0, "wall_seconds": 0}
    budget_file.write_text(json.dumps({k: round(earlier[k] + timing[k], 1) for k in timing}, indent=1))


def run_search(spec_path: Path, out: Path, dry_run: bool) -> None:
    directory = out / "search" / spec_path.stem
    budget_file = out / "search" / f"{spec_path.stem}.budget.json"
    if search_done(directory):
        return
    resuming = (directory / "tune_spec.yaml").exists()
    tune_file = out / "search" / f"{spec_path.stem}.tune.yaml"
    if not resuming:
        tune_file.parent.mkdir(parents=True, exist_ok=True)
        tune_file.write_text(yaml.safe_dump(search_spec(spec_path, out), sort_keys=False))
    command = ["ponderlab", "tune", str(directory if resuming else tune_file)]
    command += ["--resume"] if resuming else (["--dry-run"] if dry_run else [])
    timed_search(command, budget_file, dry_run)


def run_extra(spec_path: Path, out: Path, dry_run: bool) -> None:
    """A follow-up search (its own tune spec) into OUT/tried/<name>, with its CPU time."""
    name = yaml.safe_load(spec_path.read_text())["name"]
    directory = out / "tried" / name
    budget_file = out / "tried" / f"{name}.budget.json"
    if search_done(directory):
        return
    resuming = (directory / "tune_spec.yaml").exists()
    command = ["ponderlab", "tune", str(directory) if resuming else str(spec_path),
               *([] if resuming else [f"tune.storage_path={out / 'tried'}"])]
    command += ["--resume"] if resuming else (["--dry-run"] if dry_run else [])
    timed_search(command, budget_file, dry_run)


def best_setting(directory: Path) -> dict | None:
    """The search's chosen setting (best mean over seeds, see seqicl_tools.settings), or None."""
    if not (directory / "results.csv").exists():
        return None
    ranked = settings(directory)
    return ranked[0] if ranked and ranked[0]["trials"] else None


def write_back(spec_path: Path, out: Path) -> None:
    """The chosen setting's spec (seed 0) becomes the row's example spec."""
    directory = out / "search" / spec_path.stem
    best = best_setting(directory)
    if best is None:
        return
    spec = yaml.safe_load((directory / best["trials"][0]["run_dir"] / "spec.yaml").read_text())
    spec.pop("output_dir", None)
    spec = {"name": yaml.safe_load(spec_path.read_text())["name"], **spec, "seed": 0}
    tried = "; ".join(
        f"{describe(g['config'])} -> val {', '.join(f'{v:.3f}' for v in g['values']) or 'failed'}"
        f" (seeds {', '.join(str(t['_seed']) for t in g['trials'])})" for g in settings(directory))
    task, backbone = row_info(spec_path)
    header = (
        f"# seq_icl {task.replace('_', ' ')}, {backbone}: the best setting of a `ponderlab tune` search\n"
        f"# (by the mean over its seeds of validation exact match), written by examples/seq_icl/reproduce.py\n"
        f"# (do not edit by hand; rerun the search instead).\n"
        f"# Search ({len(read_search(directory))} trials): {tried}\n"
        f"# Results over seeds: docs/results/seq_icl/table.md\n"
    )
    text = header + yaml.safe_dump(spec, sort_keys=False)
    if spec_path.read_text() != text:
        spec_path.write_text(text)


def run_seeds(spec_path: Path, out: Path, seeds: int, dry_run: bool) -> None:
    """Seeds 0..N-1 of the example spec; a search trial with the same spec and seed is copied."""
    spec = yaml.safe_load(spec_path.read_text())
    directory = out / "search" / spec_path.stem
    best = best_setting(directory)
    trials = {t["_seed"]: directory / t["run_dir"] for t in best["trials"]} if best else {}
    todo = []
    for seed in range(seeds):
        run_dir = out / "seeds" / spec_path.stem / f"seed{seed}"
        if (run_dir / "results.json").exists():
            continue
        trial = trials.get(seed)
        if trial is not None and (trial / "results.json").exists():
            trial_spec = yaml.safe_load((trial / "spec.yaml").read_text())
            if comparable(trial_spec) == comparable({**spec, "seed": seed}):
                run_dir.mkdir(parents=True, exist_ok=True)
                for name in ("spec.yaml", "metrics.jsonl", "results.json"):
                    shutil.copy(trial / name, run_dir / name)
                (run_dir / "source.txt").write_text(f"copied from the search trial {trial}\n")
                continue
        todo.append((seed, run_dir))
    if dry_run:
        for seed, run_dir in todo:
            print(f"would run {spec_path.name} seed={seed} -> {run_dir}")
        return

    def one(item: tuple[int, Path]) -> None:
        seed, run_dir = item
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted run: start it again
        timing = timed(["ponderlab", "run", str(spec_path), f"seed={seed}", "--output-dir", str(run_dir),
                        "--no-progress"], {**os.environ, "OMP_NUM_THREADS": "1"})
        (run_dir / "process_time.json").write_text(json.dumps(timing, indent=1))

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        list(pool.map(one, todo))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/seq_icl", help="Raw run outputs (not committed).")
    parser.add_argument("--only", action="append", help="Glob on row names (spec stems); repeatable.")
    parser.add_argument("--skip-search", action="store_true", help="Use the example specs as they are.")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per row (0..N-1).")
    parser.add_argument("--table-only", action="store_true", help="Only write the table from finished runs.")
    parser.add_argument("--dry-run", action="store_true", help="Validate the searches, list what would run.")
    parser.add_argument("--parallel", type=int, default=1,
                        help="Training processes at once, searches included (default 1).")
    parser.add_argument("--nice", type=int, default=10,
                        help="Niceness added to every training process (default 10).")
    parser.add_argument("--extra", action="append", default=[],
                        help="Also run the follow-up search examples/seq_icl/tune_NAME.yaml into OUT/tried/NAME.")
    parser.add_argument("--adopt", action="append", default=[],
                        help="Follow-ups OUT/tried/NAME (one setting; repeatable, their seeds pooled) that replace "
                             "the --only row's setting and seeds if better over the seeds (see adopt()).")
    args = parser.parse_args(argv)

    global PARALLEL
    PARALLEL = args.parallel
    seqicl_tools.NICE = ["nice", "-n", str(args.nice)]
    out = Path(args.output_dir).resolve()
    specs = [p for p in HERE.glob("*.yaml") if not p.stem.startswith("tune")]
    specs.sort(key=lambda p: (row_info(p)[0], ORDER.index(row_info(p)[1]) if row_info(p)[1] in ORDER else 99))
    selected = [p for p in specs if any(fnmatch.fnmatch(p.stem, g) for g in (args.only or ["*"]))]
    if not selected:
        print(f"no row matches {args.only}", file=sys.stderr)
        return 2
    if not args.table_only:
        for spec_path in selected:
            if not args.skip_search:
                run_search(spec_path, out, args.dry_run)
                if not args.dry_run:
                    write_back(spec_path, out)
            run_seeds(spec_path, out, args.seeds, args.dry_run)
    for name in args.extra:
        run_extra(HERE / f"tune_{name}.yaml", out, args.dry_run)
    if args.dry_run:
        return 0
    if args.adopt:
        if len(selected) != 1:
            raise SystemExit("--adopt needs --only naming exactly one row")
        adopt(selected[0], out, args.adopt, args.seeds)
    # With --only, only the named rows are summarized from OUT; every other row, and a named row
    # of which OUT holds no runs, stays as the last run wrote it (table.json), so a partial copy
    # of runs/ cannot rewrite or drop rows it lacks; only its seq_icl-recipe follow-ups found in
    # OUT are added.
    earlier = previous_rows() if args.only else {}
    chosen = {p.stem for p in selected}
    summaries, kept = {}, []
    for spec_path in specs:
        row = spec_path.stem
        summary = summarize(spec_path, out) if row in chosen else None
        if row in earlier and summary is not None:  # a search this copy of runs/ lacks is kept
            summary = carry_search(summary, earlier[row])
        elif row in earlier:
            summary = with_recipe(earlier[row], out)
            kept.append(row)
            if row in chosen:
                print(f"{row}: no finished runs in {out}; its row is kept from table.json", file=sys.stderr)
        summaries[row] = summary
    rows = [r for r in summaries.values() if r is not None]
    write_table(rows, tried_cpu_seconds(out), [stem for stem, r in summaries.items() if r is None], kept)
    write_search_pages(out, chosen)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
