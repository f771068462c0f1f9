"""Source size at a git revision: code lines of core/ and plugins/, and the lines a
newcomer reads to follow `graves` end to end.

Code lines are cloc's: non-blank lines that are not comments or docstrings (Python)
or comments (C). "Reading graves" counts every line (docstrings included) of the
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
        ("core/halting/cumulative.py", ["CumulativeHalting"]),
        ("core/halting/loop.py", ["cumulative_halting_loop", "DenseTokens"]),
        ("core/early_exit/packed.py", ["PackedTokens"]),
        ("core/halting/units.py", ["HaltingUnit", "rowwise_linear", "accumulation_dtype"]),
        ("core/halting/outputs.py", ["accumulate"]),
        ("core/early_exit/running.py", ["RunningTokens"]),
        ("core/early_exit/policy.py", ["hop_policy", "speculation_mode"]),
        ("core/early_exit/execution.py", ["PackedHops", "DepthRowHops", "packs_rows", "depth_hop"]),
    ],
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
    totals = {"core": 0, "plugins": 0}
    for path in files(rev):
        text = show(rev, path)
        if text is None:
            continue
        count = c_code_lines(text) if path.endswith(".c") else python_code_lines(text)
        totals[path.split("/")[0]] += count
    return totals


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
    print(f"{'code lines core/ + plugins/':<28}{sum(before.values()):>12}{sum(after.values()):>12}")
    reading = reading_lines(args.revs[0], READING["before"]), reading_lines(args.revs[1], READING["after"])
    print(f"{'lines read to follow graves':<28}{reading[0]:>12}{reading[1]:>12}")
    dense = [reading_lines(rev, [(path, symbols) for path, symbols in READING[key] if path not in DENSE_ONLY])
             for rev, key in zip(args.revs, ("before", "after"), strict=True)]
    print(f"{'  of which not packed':<28}{dense[0]:>12}{dense[1]:>12}")


if __name__ == "__main__":
    main()
