"""The `ponderlab` command line.

Subcommands: plugins, run, validate, schema, and those contributed by other
modules (tune, eval, report, new-plugin), each loaded only when used. A command
module defines `add_arguments(parser)` and `main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from .errors import PonderlabError

#: command -> (module, one-line help). Each module keeps its top-level imports light (it is
#: imported whenever the parser is built) and imports what its command needs when it runs.
EXTERNAL_COMMANDS = {
    "tune": ("ponderlab.tune.cli", "run a Ray Tune search over plugin combinations"),
    "eval": ("ponderlab.core.evaluation", "evaluate a saved run's checkpoint"),
    "report": ("ponderlab.core.report", "tables and plots comparing runs"),
    "new-plugin": ("ponderlab.core.scaffold", "write a ready-to-install plugin package"),
}


# --------------------------------------------------------------------------- plugins
def cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import get_registry

    registry = get_registry()
    rows = [
        {
            "kind": info.kind,
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "entry_point": info.source,
            "class": f"{info.cls.__module__}.{info.cls.__qualname__}",
        }
        for info in registry.all()
    ]
    errors = [
        {"kind": "error", "entry_point": e.source, "distribution": e.distribution, "error": e.error}
        for e in registry.errors
    ]
    conflicts = [
        {"kind": "conflict", "plugin_kind": kind, "name": name, "sources": [p.describe() for p in infos]}
        for (kind, name), infos in registry.conflicts.items()
    ]
    if args.json:
        print(json.dumps(rows + errors + conflicts, indent=2))
        return 0
    for kind in ("backbone", "halting", "task"):
        print(f"{kind}:")
        for row in sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["name"]):
            print(f"  {row['name']:<24} {row['distribution']} {row['version']}  [{row['entry_point']}]")
    if conflicts:
        print("conflicts:")
        for c in conflicts:
            print(f"  {c['plugin_kind']} {c['name']!r}: registered by {' and '.join(c['sources'])}")
    if errors:
        print("load errors:")
        for e in errors:
            print(f"  {e['entry_point']} ({e['distribution']}): {e['error']}")
    return 0


# --------------------------------------------------------------------------- run / validate / schema
def _add_spec_arguments(parser: argparse.ArgumentParser, spec_required: bool) -> None:
    parser.add_argument("spec", nargs=None if spec_required else "?", help="YAML spec file")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides")


def _split_spec_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    spec, overrides = args.spec, list(args.overrides)
    if spec is not None and "=" in spec and not spec.endswith((".yaml", ".yml")):
        overrides.insert(0, spec)  # `ponderlab run training.steps=10` uses the quickstart
        spec = None
    return spec, overrides


def cmd_run(args: argparse.Namespace) -> int:
    from .distributed.placement import apply_flags
    from .run import format_summary, launch, resume_spec
    from .spec import load_spec

    spec_path, overrides = _split_spec_and_overrides(args)
    if args.resume and spec_path is None and not overrides:  # --resume with only a run directory
        if not args.output_dir:
            raise PonderlabError("--resume needs --output-dir (or a spec naming output_dir)")
        spec = resume_spec(Path(args.output_dir), None)
    else:
        spec = load_spec(spec_path, overrides)
    flags = {"--workers": args.workers, "--gpus-per-worker": args.gpus_per_worker, "--address": args.address}
    spec = apply_flags(spec, flags)
    # N workers run on Ray Train, with the same Trainer step (docs/scale.md)
    results, run_dir = launch(
        spec, output_dir=args.output_dir, resume=args.resume, progress=not args.no_progress
    )
    print(format_summary(results, run_dir))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .spec import load_spec

    spec_path, overrides = _split_spec_and_overrides(args)
    spec = load_spec(spec_path, overrides)
    print(f"ok: {spec_path or 'quickstart'} ({spec.task.name} / {spec.backbone.name} / {spec.halting.name})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .spec import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))
    return 0


# --------------------------------------------------------------------------- entry
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponderlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("plugins", help="list installed backbones, halting strategies and tasks")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(handler=cmd_plugins)

    p = commands.add_parser("run", help="train and test one experiment (default: the quickstart)")
    _add_spec_arguments(p, spec_required=False)
    p.add_argument("--output-dir", help="run directory (default runs/<name>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, help="data-parallel workers on Ray Train (distributed.workers)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (distributed.gpus_per_worker)")
    p.add_argument("--address", help="join this Ray cluster (distributed.address), e.g. auto or HOST:6379")
    p.set_defaults(handler=cmd_run)

    p = commands.add_parser("validate", help="check a spec without running it")
    _add_spec_arguments(p, spec_required=True)
    p.set_defaults(handler=cmd_validate)

    p = commands.add_parser("schema", help="JSON Schema of the spec with every installed plugin")
    p.set_defaults(handler=cmd_schema)

    for name, (module_name, help_text) in EXTERNAL_COMMANDS.items():
        module = importlib.import_module(module_name)
        p = commands.add_parser(name, help=help_text)
        module.add_arguments(p)
        p.set_defaults(handler=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # renamed spec keys still load; say so on the command line, where DeprecationWarnings are hidden
    warnings.filterwarnings("default", message="spec key ", category=DeprecationWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except PonderlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
