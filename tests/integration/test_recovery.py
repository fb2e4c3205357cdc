"""Issue 20 #7: a retrain killed with SIGKILL left its MLflow run RUNNING, its run folder half-written and
its ephemeral Prefect server listening. A real process does all three and kills itself; the next start
(`cleanup.recover`, called first by the nightly flow) cleans up, and touches nothing that is alive."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chaptering import cleanup
from chaptering.config import Settings

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="process checks read /proc (Linux)")

KILLED_RUN = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import mlflow
    from prefect.server.api.server import SubprocessASGIServer
    from chaptering import pipeline, registry
    from chaptering.config import Settings

    settings = Settings(state_dir=Path(sys.argv[1])).prepare()
    run_dir = pipeline.new_run_dir(settings)
    registry.configure(settings)
    run = mlflow.start_run(run_name=f"train-{run_dir.name}")
    (run_dir / "train").mkdir()  # half-written work
    server = SubprocessASGIServer()
    server.start(timeout=150)
    print(json.dumps({"run_dir": str(run_dir), "run_id": run.info.run_id,
                      "server_pid": server.server_process.pid}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: what the OOM killer does
""")


def _alive(pid: int) -> bool:
    return cleanup._exists(pid)


def _stop(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_killed_retrain_is_cleaned_up_on_the_next_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prefect_home = state / "prefect"
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    out = tmp_path / "killed.out"
    started: list[int] = []
    try:
        with out.open("w") as f:  # a file, not a pipe: the orphaned server keeps its stdout open
            proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(state)], env=env, stdout=f,
                                  stderr=subprocess.STDOUT, timeout=400, check=False)
        assert proc.returncode == -signal.SIGKILL, out.read_text()[-3000:]
        killed = json.loads(out.read_text().strip().splitlines()[-1])
        started.append(killed["server_pid"])
        run_dir = Path(killed["run_dir"])
        assert _alive(killed["server_pid"])  # the debris this issue is about

        # Work that is alive must survive the cleanup: a run folder owned by this process, and a
        # "Prefect server" of the same home whose parent (this test) is alive.
        live_dir = state / "runs" / "live-run"
        live_dir.mkdir()
        cleanup.claim(live_dir)
        live_server = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)", cleanup.PREFECT_SERVER_APP],
            env={**env, "PREFECT__SERVER_EPHEMERAL": "1"})
        started.append(live_server.pid)

        settings = Settings(state_dir=state)
        report = cleanup.recover(settings, prefect_home)

        assert report.incomplete_runs == [run_dir.name]
        marker = json.loads((run_dir / cleanup.INCOMPLETE).read_text())
        assert "died before run" in marker["reason"] and (run_dir / "train").is_dir()  # kept for inspection
        assert not (live_dir / cleanup.INCOMPLETE).exists()
        from mlflow import MlflowClient

        run = MlflowClient(tracking_uri=settings.tracking_uri).get_run(killed["run_id"])
        assert run.info.status == "FAILED" and report.mlflow_runs_failed == [killed["run_id"]]
        assert report.prefect_servers_stopped == [killed["server_pid"]]
        deadline = time.monotonic() + 10
        while _alive(killed["server_pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(killed["server_pid"])
        assert live_server.poll() is None  # its parent lives: not an orphan, not touched

        assert not cleanup.recover(settings, prefect_home)  # a second start finds nothing to do
    finally:
        _stop(started)


def test_owner_checks() -> None:
    """A dead pid, a reused pid (other start time) and another host's process are told apart."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = cleanup.owner_record()
    assert not cleanup.owner_alive({**me, "pid": dead.pid, "proc_start": None})
    assert cleanup.owner_alive(me)
    assert not cleanup.owner_alive({**me, "proc_start": (me["proc_start"] or 0) + 1})  # pid reused
    assert cleanup.owner_alive({**me, "host": "another-machine"})  # cannot see it: assume alive
    assert not cleanup.owner_alive({"pid": "junk", "host": me["host"]})
