"""A server in a child process group: start it, wait until its health URL answers 200, stop the group.

Tests, benchmarks and operators' scripts start `chaptering serve`, `prefect server` and `mlflow server`
the same way; servers that fork workers (prefect starts uvicorn) must leave nothing behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the whole group is gone already
        pass


@contextmanager
def server_process(cmd: list[str], health_url: str, log_path: Path, *, env: dict[str, str] | None = None,
                   cwd: Path | None = None, name: str = "server", ready_s: float = 120,
                   stop_s: float = 30) -> Iterator[subprocess.Popen]:
    """Run `cmd` in its own process group (output to `log_path`), yield the process once `health_url`
    answers 200, then SIGTERM the group (SIGKILL after `stop_s`): servers that fork workers (prefect
    starts uvicorn) leave nothing behind. Fails with the log's tail if the server exits or is not
    ready within `ready_s`."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(health_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not ready in {ready_s:g} s: {log_path.read_text()[-2000:]}")
            time.sleep(0.25)
        yield proc
    finally:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
        _signal_group(proc, signal.SIGKILL)  # children that outlived their parent
