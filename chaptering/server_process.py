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


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # the whole group is gone already
        pass


def group_alive(pid: int) -> bool:
    """Whether a process of the group led by `pid` still runs. Zombies do not count: killed children of
    a dead leader go to PID 1, which in a container may never reap them, and a signal to a zombie
    still succeeds."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: any process of the group, zombie or not
        try:
            os.killpg(pid, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[2]) == pid and fields[0] != "Z":
            return True
    return False


def answers(url: str, timeout: float = 3) -> bool:
    """Whether `url` answers 200 right now."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(proc: subprocess.Popen | None, health_url: str, log_path: Path, name: str, ready_s: float) -> None:
    """Until `health_url` answers 200; fails with the log's tail if `proc` exits or time runs out."""
    deadline = time.monotonic() + ready_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        if answers(health_url, timeout=2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready in {ready_s:g} s: {log_path.read_text()[-2000:]}")
        time.sleep(0.25)


def start_server(cmd: list[str], health_url: str, log_path: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, name: str = "server", ready_s: float = 120) -> subprocess.Popen:
    """Start `cmd` in a process group of its own (output to `log_path`) and return once `health_url`
    answers 200; a server that does not come up is stopped and the error carries its log's tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_healthy(proc, health_url, log_path, name, ready_s)
    except BaseException:
        stop_group(proc.pid)
        raise
    return proc


def stop_group(pid: int, stop_s: float = 30) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL what is left after `stop_s`: servers that fork
    workers (prefect starts uvicorn) leave nothing behind."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + stop_s
    while group_alive(pid) and time.monotonic() < deadline:
        try:  # reap our own child, or the group leader stays a zombie and looks alive
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:  # not our child (another process started it)
            pass
        time.sleep(0.1)
    _signal_group(pid, signal.SIGKILL)  # what outlived the leader, or a leader that ignored SIGTERM
    deadline = time.monotonic() + 10
    while group_alive(pid) and time.monotonic() < deadline:  # SIGKILL is delivered asynchronously
        time.sleep(0.05)


@contextmanager
def server_process(cmd: list[str], health_url: str, log_path: Path, *, env: dict[str, str] | None = None,
                   cwd: Path | None = None, name: str = "server", ready_s: float = 120,
                   stop_s: float = 30) -> Iterator[subprocess.Popen]:
    """`start_server` for the length of a `with` block, then `stop_group`. Fails the caller (an
    AssertionError in tests) with the log's tail if the server exits or is not ready within `ready_s`."""
    try:
        proc = start_server(cmd, health_url, log_path, env=env, cwd=cwd, name=name, ready_s=ready_s)
    except RuntimeError as e:
        raise AssertionError(str(e)) from e
    try:
        yield proc
    finally:
        stop_group(proc.pid, stop_s)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
