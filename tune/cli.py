"""`ponderlab tune SPEC [dotted.key=value ...] [--resume]`: a Ray Tune search over plugin combinations.

Top-level imports stay light: Ray is imported only when a search starts.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "spec", help="search spec (base experiment + search: + tune:), or with --resume an experiment directory"
    )
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides (search.<key>.<kind>=... too)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted search (Tuner.restore)")
    parser.add_argument(
        "--retry-failed", action="store_true", help="with --resume: also resume trials that ended in an error"
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and list the trials; do not start Ray")


def describe_plan(tspec) -> str:
    """What a search will run, for --dry-run and the start banner."""
    options = tspec.options
    lines = [
        f"search {tspec.name}: {tspec.num_trials} trial(s), metric {options.metric} ({options.resolved_mode}), "
        f"scheduler {options.scheduler}, search algorithm {options.search_algorithm}",
        f"experiment directory: {tspec.experiment_dir}",
    ]
    if not tspec.dims:
        lines.append("  (no searched keys: every trial runs the base spec)")
    for dim in tspec.dims:
        lines.append(f"  {dim.key}: {dim.describe_domain()}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from ponderlab.core.errors import SpecError

    from .spec import load_tune_spec, saved_spec_path

    spec_path = Path(args.spec)
    if spec_path.is_dir():
        if not args.resume:
            raise SpecError(f"{spec_path} is a directory: pass a search spec (or --resume to continue that search)")
        spec_path = saved_spec_path(spec_path)
        if not spec_path.exists():
            raise SpecError(f"--resume: {spec_path.parent} holds no search (no {spec_path.name})")
    if args.retry_failed and not args.resume:
        raise SpecError("--retry-failed only applies with --resume")
    tspec = load_tune_spec(spec_path, args.overrides)
    print(describe_plan(tspec))
    if args.dry_run:
        print("ok: every searched value validated (dry run, nothing started)")
        return 0

    from .results import to_markdown
    from .search import run_search

    outcome = run_search(tspec, resume=args.resume, retry_failed=args.retry_failed)
    table = outcome.table
    print()
    print(to_markdown(table, limit=20), end="")
    if len(table.rows) > 20:
        print(f"... {len(table.rows) - 20} more rows in {outcome.outputs['markdown']}")
    counts = Counter(row.status for row in table.rows)
    print("trials: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    print(f"results: {outcome.outputs['csv']} and {outcome.outputs['markdown']}")
    if "best" in outcome.outputs:
        print(f"best: {outcome.outputs['best']} (ponderlab run {outcome.outputs['best']})")
    if outcome.interrupted:
        print(
            f"search interrupted; continue it with: ponderlab tune {outcome.experiment_dir} --resume",
            file=sys.stderr,
        )
        return 130
    if table.best is None:
        print(f"error: no trial reported {table.metric}", file=sys.stderr)
        return 1
    return 0
