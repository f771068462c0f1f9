"""Seed 000's comparison at a CPU scale where the baselines learn: search, grid with seeds, table.

    python examples/seed000/reproduce.py                       # search, every run, random arms, table
    python examples/seed000/reproduce.py --backbones transformer,lstm
    python examples/seed000/reproduce.py --cells mamba:graves,armt:seed000_act --tasks ca1,ca2
                                                               # chosen (backbone, halting) rows, in that order
    python examples/seed000/reproduce.py --report-only         # table from the finished runs
    python examples/seed000/reproduce.py --report-only --embed docs/results.md  # and into docs/results.md
    python examples/seed000/reproduce.py --print-specs         # the composed specs
    python examples/seed000/reproduce.py --dry-run --print-specs  # what it would start now, and their specs

Steps (each skipped when its output exists, so the same command resumes where it stopped):

1. `ponderlab tune examples/seed000/search_tune.yaml` (fixed depth, halting none): the
   settings search; its trials are listed in docs/results/seed000/search.md. grid.yaml holds
   the settings chosen from it (the search does not rewrite grid.yaml).
2. Every task x backbone x halting x seed of grid.yaml (`nice -n 10 ponderlab run`, `--nice`, one torch
   thread, `--jobs` at a time, seed-major so that every cell gets seed 0 before seed 1). With
   `--cells BACKBONE:HALTING,...` only those rows, pair by pair in the order given and cell by
   cell (every seed of one task before the next), each followed by its step 3; `--stop-at HH:MM`
   starts no run at or after the next HH:MM UTC, fixed when the command starts (tomorrow's when
   today's has passed: started 23:50, `--stop-at 00:10` stops 20 minutes later).
3. `random` at equal mean hops for each (task, backbone, ACT halting) that differs from `none`
   (Welch p < 0.05 over seeds in test token accuracy or in test exact match; seed000_queue.random_row,
   the same rule for the `extra` cells): mean_hops = that ACT row's mean test hops, same cap; a
   row once started keeps its hops and is completed to every seed.
4. The second settings search (grid.yaml `search2`: `ponderlab tune` of each spec in order, fixed
   depth, seed 0), then seeds 1 and 2 of each trial that beats the grid's seed-0 row by the margin.
5. grid.yaml `extra` cells over the grid's seeds, in order: CA shift 3 (Mamba, none and constant);
   then the transformer's addition at `extra.settings.trained` (lr 1e-3, 12000 steps) with
   seed000_act, `random` at an ACT row's mean hops where it differs from none at that setting,
   graves and constant, over grid.yaml `extra.seeds` (trained: seeds 0-4; `--seeds` overrides). Steps 4 and 5 run in runs/seed000-search2/ (`--runs2`); their table is
   docs/results/seed000/search2.md.
6. docs/results/seed000/table.md and table.json: test token accuracy and exact match, mean
   over seeds with 95% t-intervals, mean hops, CPU seconds; each halting minus none and each ACT
   row minus its random row (Welch); the CA reference predictors. `--embed docs/results.md`
   copies search.md, search2.md and table.md into that file's seed000 section.

Runs go to runs/seed000/<task>-<backbone>-<halting>-s<seed>/ (raw, not committed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

if str(Path(__file__).resolve().parent) not in sys.path:  # the study's modules beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import seed000_queue as queue  # noqa: E402
import seed000_search2 as search2  # noqa: E402
from seed000_queue import (  # noqa: E402
    cell_points,
    compose,
    grid_points,
    merge,
    parse_cells,
    past_stop,
    random_points,
    run_points,
    search,
    selected,
    set_stop_at,
    stop_deadline,
    train,
)
from seed000_tables import (  # noqa: E402
    HERE,
    collect,
    comparisons,
    embed,
    fmt,
    interval,
    log,
    search_table,
    welch,
    write_table,
)

__all__ = ["HERE", "cell_points", "collect", "comparisons", "compose", "embed", "fmt", "grid_points", "interval",
           "log", "merge", "parse_cells", "past_stop", "queue", "search2", "random_points", "run_points", "search", "search_table",
           "selected", "set_stop_at", "stop_deadline", "train", "welch", "write_table"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=str(HERE / "grid.yaml"))
    parser.add_argument("--runs", default="runs/seed000")
    parser.add_argument("--runs2", default="runs/seed000-search2",
                        help="follow-up and beyond-the-grid runs of steps 4 and 5")
    parser.add_argument("--report", default="docs/results/seed000")
    parser.add_argument("--tasks")
    parser.add_argument("--backbones")
    parser.add_argument("--haltings")
    parser.add_argument("--cells", metavar="BACKBONE:HALTING,...",
                        help="run only these (backbone, halting) rows, pair by pair in the order given, each "
                             "over --tasks cell by cell (all seeds of one task before the next), with its "
                             "`random` row right after it where the rule triggers one (instead of "
                             "--backbones x --haltings)")
    parser.add_argument("--stop-at", metavar="HH:MM",
                        help="start no run at or after the next HH:MM UTC, fixed when the command starts (tomorrow's when "
                             "today's has passed); finished runs and the table are kept")
    parser.add_argument("--seeds", help="comma-separated seeds for every run (default: grid.yaml's `seeds`, and "
                                         "`extra.seeds` for a setting listed there)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (1 thread each)")
    parser.add_argument("--nice", type=int, default=10, help="niceness of each training process (default 10)")
    parser.add_argument("--no-search", action="store_true", help="skip step 1")
    parser.add_argument("--no-random", action="store_true", help="skip step 3")
    parser.add_argument("--no-search2", action="store_true", help="skip steps 4 and 5")
    parser.add_argument("--print-specs", action="store_true",
                        help="print the grid's composed specs (with --dry-run: the specs of the runs it lists)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list, in order, the runs and searches the command would start now (finished ones "
                             "skipped; `random` rows as the rule reads the runs finished so far, so a row that "
                             "waits on runs not yet finished is not listed), start nothing, write no table")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--embed", metavar="RESULTS_MD",
                        help="also copy the generated search.md, search2.md and table.md into this file's seed000 section")
    args = parser.parse_args()
    if args.stop_at:
        stop_deadline(args.stop_at, time.time())  # a malformed HH:MM fails before anything runs

    queue.NICE = args.nice
    grid = yaml.safe_load(Path(args.grid).read_text())
    tasks = selected(list(grid["tasks"]), args.tasks, "task")
    backbones = selected(list(grid["backbones"]), args.backbones, "backbone")
    haltings = selected(list(grid["haltings"]), args.haltings, "halting")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(grid["seeds"])
    runs, report = Path(args.runs), Path(args.report)
    if args.cells:
        if args.backbones or args.haltings:
            raise SystemExit("--cells replaces --backbones and --haltings; give one or the other")
        batches = cell_points(grid, parse_cells(grid, args.cells), tasks, seeds, runs)
    else:
        batches = [(None, grid_points(grid, tasks, backbones, haltings, seeds, runs))]
    if args.print_specs and not args.dry_run:
        for _, points in batches:
            for spec, _ in points:
                print("---")
                print(yaml.safe_dump(spec, sort_keys=False), end="")
        return 0
    queue.DRY_RUN, queue.PRINT_SPECS = args.dry_run, args.print_specs
    if args.dry_run:
        args.jobs = 1  # listed in the order they would start
    if args.dry_run and args.report_only:
        raise SystemExit("--dry-run lists what a run would start; --report-only starts nothing: give one")
    if not args.report_only:
        set_stop_at(args.stop_at)  # one deadline, from now
        if not args.no_search:
            search(grid, runs)
        started = time.perf_counter()
        for pair, points in batches:
            run_points(points, args.jobs)
            if pair is not None and not args.no_random and pair[1] in grid.get("act_haltings", []):
                run_points(random_points(grid, runs, tasks, [pair[0]], seeds, acts=[pair[1]]), args.jobs)
        if args.cells is None and not args.no_random:
            run_points(random_points(grid, runs, tasks, backbones, seeds), args.jobs)
        log(f"grid done in {time.perf_counter() - started:.0f} s wall")
        if not args.no_search2 and args.cells is None:
            search2.run(grid, runs, Path(args.runs2), seeds, args.jobs, per_setting=not args.seeds)
        if args.dry_run:
            return 0
    search_table(grid, runs, report)
    search2.write_search2(grid, runs, Path(args.runs2), report)
    write_table(grid, runs, report)
    if args.embed:
        embed(report, Path(args.embed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
