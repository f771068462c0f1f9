"""Shared by the Ray tests: tiny search specs, result readers, the CLI in a subprocess, and the
ports and processes of a local cluster started with `ray start`.

Import it before Ray: it tells Ray to bind every socket to loopback.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Ray resolves 127.0.0.1 to the machine's outward address unless told it runs without a
# cluster network; with this set before Ray is imported, every Ray socket binds to loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = Path(__file__).resolve().parents[1]

TINY = """\
name: NAME
seed: 0
"""
TASK = "task: {name: binary_copy, length: 8, train_size: 128, validation_size: 16, test_size: 16}\n"


def short_temp_dir(prefix: str) -> Path:
    """A temp dir with a short path: Ray's unix socket paths must stay under 107 characters."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def write_search(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(TINY.replace("NAME", name) + body.replace("STORAGE", str(directory / "store")))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ponderlab.core.cli", *args], cwd=REPO, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_under(marker: str) -> list[int]:
    """PIDs whose command line names `marker` (this test's own Ray temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in command:
            found.append(int(entry.name))
    return found


def stop_cluster(temp_dir: Path) -> None:
    """End the processes of this test's cluster only (`ray stop` would end every Ray here)."""
    pids = processes_under(str(temp_dir))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 3
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.3)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def without_ray_auth(env: dict) -> dict:
    """`env` less every variable that tells Ray about authentication."""
    return {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
