"""Source size at a git revision: code lines of core/ and plugins/, and the lines a
newcomer reads to follow `graves` end to end.

Code lines are cloc's: non-blank lines that are not comments or docstrings (Python)
or comments (C). "Like for like" leaves out the files of features added after the
before-revision (FEATURES_ADDED below), so that it compares the same functionality;
files split out of older modules (SPLIT_FROM_OLD) stay counted. Files added since
the before-revision that neither list names are printed, to be classified. "Reading graves" counts every line (docstrings included) of the
definitions a reader meets from `GravesACT.forward` down, listed in READING below:
whole files where the file serves that path only, else the named functions/classes.

    python benchmarks/line_counts.py              # the working tree against main
    python benchmarks/line_counts.py --revs main HEAD
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import tokenize

#: revision-independent names of what a reader of graves meets: (path, symbols or None = file).
READING = {
    "before": [
        ("plugins/halting/graves.py", None),
        ("plugins/halting/cumulative.py", None),
        ("plugins/halting/fused.py", None),
        ("plugins/halting/fused_act.c", None),
        ("plugins/halting/packed.py", ["packed_cumulative_halting_loop"]),
        ("plugins/halting/common.py", ["cumulative_halting_loop", "accumulate", "HaltingUnit",
                                       "rowwise_linear", "accumulation_dtype", "RunningTokens"]),
        ("core/speculation.py", ["hop_policy", "speculation_mode"]),
        ("core/row_hops.py", ["packs_rows", "DepthRowHops"]),
    ],
    "after": [
        ("plugins/halting/graves.py", None),
        ("core/halting/config.py", ["ACTConfig"]),
        ("core/halting/loop.py", ["CumulativeHalting", "cumulative_halting_loop", "DenseTokens"]),
        ("core/early_exit/packed.py", ["PackedTokens"]),
        ("core/halting/units.py", ["HaltingUnit", "accumulation_dtype"]),
        ("core/halting/outputs.py", ["accumulate"]),
        ("core/early_exit/policy.py", ["RunningTokens", "hop_policy", "speculation_mode"]),
        ("core/early_exit/execution.py", ["PackedHops", "depth_hop"]),
    ],
}


#: files that implement features added after 837f26f (issues 24, 25, 27 and later work).
FEATURES_ADDED = {
    "plugins/halting/calm.py": "CALM (issue 24)",
    "plugins/halting/confidence.py": "confidence exits shared by calm and layerskip (issue 24)",
    "plugins/halting/layerskip.py": "LayerSkip (issue 24)",
    "plugins/halting/recurrent_depth.py": "recurrent depth (issue 24)",
    "plugins/halting/mixture_of_depths.py": "mixture of depths (issue 24)",
    "plugins/halting/mixture_of_recursions.py": "mixture of recursions (issue 24)",
    "plugins/halting/routing_reference.py": "slow reference of the routing strategies (issue 24)",
    "plugins/halting/seed000_act.py": "seed 000's ACT as its own strategy",
    "core/halting/routing.py": "capacity routing toolkit (issue 24)",
    "core/halting/head.py": "output head given to halting sites (issue 24)",
    "core/distributed/__init__.py": "distributed runs on Ray Train (issue 25)",
    "core/distributed/group.py": "distributed runs on Ray Train (issue 25)",
    "core/distributed/launch.py": "distributed runs on Ray Train (issue 25)",
    "core/distributed/placement.py": "distributed runs on Ray Train (issue 25)",
    "core/distributed/worker.py": "distributed runs on Ray Train (issue 25)",
    "core/run_lock.py": "runs claim their directory with a lock",
    "plugins/backbones/hf.py": "Hugging Face backbones (issue 27)",
    "plugins/backbones/hf_block.py": "Hugging Face backbones (issue 27)",
    "plugins/backbones/hf_finetune.py": "Hugging Face backbones (issue 27)",
    "plugins/backbones/hf_layout.py": "Hugging Face backbones (issue 27)",
    "plugins/backbones/hf_rows.py": "early exit on Hugging Face layers (issue 27)",
    "plugins/halting/layerskip_decoding.py": "LayerSkip self-speculative decoding (issue 24)",
    "plugins/tasks/text_tokenizer.py": "real tokenizer for bAbI/BABILong (issue 27)",
    "plugins/tasks/babi_sources.py": "BABILong layouts and hub sources (issue 27)",
    "core/curriculum.py": "staged sample-length curriculum (issue 27)",
    "plugins/backbones/lstm_mixer.py": "seq_icl's LSTM model, an LSTM in the lm_simple stack (issue 30)",
}

#: files added after 837f26f that hold code split or moved out of older modules: counted.
SPLIT_FROM_OLD = {
    "core/conformance/__init__.py", "core/conformance/backbone.py", "core/conformance/base.py",
    "core/conformance/common.py", "core/conformance/halting.py", "core/conformance/probes.py",
    "core/conformance/task.py", "core/early_exit/__init__.py", "core/early_exit/execution.py",
    "core/early_exit/packed.py", "core/early_exit/policy.py", "core/early_exit/rows.py",
    "core/early_exit/running.py", "core/halting/__init__.py", "core/halting/config.py",
    "core/halting/cumulative.py", "core/halting/loop.py", "core/halting/outputs.py",
    "core/halting/units.py", "core/halting/t2t.py", "core/tasks.py", "core/run_records.py",
    "plugins/tasks/babi_vocab.py", "plugins/backbones/row_attention.py", "core/training_step.py",
    "core/trainer_checkpoints.py",
}


def show(rev: str, path: str) -> str | None:
    if rev == "WORKTREE":
        try:
            with open(path) as handle:
                return handle.read()
        except FileNotFoundError:
            return None
    result = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def files(rev: str) -> list[str]:
    if rev == "WORKTREE":
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "core", "plugins"],
                             capture_output=True, text=True, check=True).stdout
    else:
        out = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "core", "plugins"],
                             capture_output=True, text=True, check=True).stdout
    return [p for p in out.split() if p.endswith((".py", ".c"))]


def python_code_lines(text: str) -> int:
    """Lines holding a token other than comments, docstrings, newlines and indentation."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER}
    docstrings = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in skip:
            continue
        for line in range(token.start[0], token.end[0] + 1):
            if line not in docstrings:
                lines.add(line)
    return len(lines)


def c_code_lines(text: str) -> int:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("//"))


def code_lines(rev: str) -> dict[str, int]:
    """Code lines of core/, plugins/, and of the files in FEATURES_ADDED ("added")."""
    totals = {"core": 0, "plugins": 0, "added": 0}
    for path in files(rev):
        text = show(rev, path)
        if text is None:
            continue
        count = c_code_lines(text) if path.endswith(".c") else python_code_lines(text)
        totals[path.split("/")[0]] += count
        if path in FEATURES_ADDED:
            totals["added"] += count
    return totals


def unclassified(before: str, after: str) -> list[str]:
    """Files of `after` that `before` lacks and neither FEATURES_ADDED nor SPLIT_FROM_OLD names."""
    old = set(files(before))
    return sorted(p for p in files(after) if p not in old and p not in FEATURES_ADDED and p not in SPLIT_FROM_OLD)


def reading_lines(rev: str, plan: list[tuple[str, list[str] | None]]) -> int:
    total = 0
    for path, symbols in plan:
        text = show(rev, path)
        if text is None:
            raise SystemExit(f"{path} is missing at {rev}")
        if symbols is None:
            total += len(text.splitlines())
            continue
        found = {node.name: node for node in ast.parse(text).body
                 if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        for symbol in symbols:
            node = found[symbol]
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            total += node.end_lineno - start + 1
    return total


def reading_plan(rev: str) -> list[tuple[str, list[str] | None]]:
    """READING's "after" list where `rev` has its files (issue 23 landed), else its "before" list."""
    landed = all(show(rev, path) is not None for path, _ in READING["after"])
    return READING["after" if landed else "before"]


#: the same reading without depth-scope packed inference (training, and every other path)
DENSE_ONLY = {"plugins/halting/packed.py", "core/row_hops.py", "core/early_exit/packed.py",
              "core/early_exit/execution.py"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revs", nargs=2, default=["main", "WORKTREE"], metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    print(f"{'':<28}{args.revs[0]:>12}{args.revs[1]:>12}")
    before, after = code_lines(args.revs[0]), code_lines(args.revs[1])
    for key in ("core", "plugins"):
        print(f"{'code lines ' + key + '/':<28}{before[key]:>12}{after[key]:>12}")
    total = [counts["core"] + counts["plugins"] for counts in (before, after)]
    print(f"{'code lines core/ + plugins/':<28}{total[0]:>12}{total[1]:>12}")
    like = [count - counts["added"] for count, counts in zip(total, (before, after), strict=True)]
    print(f"{'  like for like':<28}{like[0]:>12}{like[1]:>12}   (without FEATURES_ADDED, listed below)")
    plans = [reading_plan(rev) for rev in args.revs]
    reading = [reading_lines(rev, plan) for rev, plan in zip(args.revs, plans, strict=True)]
    print(f"{'lines read to follow graves':<28}{reading[0]:>12}{reading[1]:>12}")
    dense = [reading_lines(rev, [(path, symbols) for path, symbols in plan if path not in DENSE_ONLY])
             for rev, plan in zip(args.revs, plans, strict=True)]
    print(f"{'  of which not packed':<28}{dense[0]:>12}{dense[1]:>12}")
    print(f"\nleft out of 'like for like' ({after['added']} code lines at {args.revs[1]}):")
    for path, feature in FEATURES_ADDED.items():
        print(f"  {path:<44} {feature}")
    for path in unclassified(*args.revs):
        print(f"  unclassified (counted): {path}")


if __name__ == "__main__":
    main()
