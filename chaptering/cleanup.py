"""Recovery after a killed retrain, run at the start of the next one.

A retrain killed with SIGKILL (OOM killer, a reboot, `kill -9`) runs no `finally`: its MLflow run stays
RUNNING, its run folder stays half-written, and the ephemeral Prefect server it started as a child keeps
running and listening. Nothing downstream trusts that debris (the watermarks and the corpus move only
in `commit_stage`), but it misleads people and tools: a RUNNING run looks like training in progress.

Every run folder gets an owner file (`owner.json`: pid, host, process start time) when it is created.
At the next start, `recover`:
- marks a folder whose owner process is gone and that has no `summary.md` with `INCOMPLETE.json` (the
  reason), kept for inspection, not deleted;
- marks the MLflow runs of such folders (`train-<folder>`) still RUNNING as FAILED, with a tag saying why;
- stops ephemeral Prefect servers that were started for this state folder and lost their parent
  (Linux /proc only; elsewhere it reports that it could not look). A server whose parent is alive is
  never touched: another retrain may be using it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from chaptering.config import Settings

log = logging.getLogger("chaptering.cleanup")

OWNER = "owner.json"
INCOMPLETE = "INCOMPLETE.json"
FINISHED = "summary.md"  # the flow's last write: a folder with it finished
PREFECT_SERVER_APP = "prefect.server.api.server:create_app"  # the ephemeral server's uvicorn factory
_PROC = Path("/proc")


@dataclass
class CleanupReport:
    """What `recover` found and did (printed in the flow log)."""

    incomplete_runs: list[str] = field(default_factory=list)
    mlflow_runs_failed: list[str] = field(default_factory=list)
    prefect_servers_stopped: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __bool__(self) -> bool:
        return bool(self.incomplete_runs or self.mlflow_runs_failed or self.prefect_servers_stopped)


# ------------------------------------------------------------------------------------------ processes


def _proc_start(pid: int) -> int | None:
    """The process' start time in clock ticks since boot (Linux), to tell a reused pid from the owner."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None  # field 22 of stat; the name is fields 1-2


def owner_record(pid: int | None = None) -> dict[str, Any]:
    """Who is running a folder: written by `claim`, read by `owner_alive`."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "host": socket.gethostname(), "proc_start": _proc_start(pid),
            "started": datetime.now(UTC).isoformat(timespec="seconds")}


def owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the recorded process still runs. Another host's process is assumed alive: we cannot see
    it, and calling live work dead is worse than leaving debris."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        pid = int(owner["pid"])
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError):
        return False
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, someone else's
    recorded, now = owner.get("proc_start"), _proc_start(pid)
    return recorded is None or now is None or recorded == now  # a different start time: pid reused


def claim(run_dir: Path) -> None:
    """Record this process as the owner of `run_dir` (called when the folder is created)."""
    (run_dir / OWNER).write_text(json.dumps(owner_record(), indent=1))


# ---------------------------------------------------------------------------------------- run folders


def _read_owner(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / OWNER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stale_run_dirs(runs_root: Path) -> list[Path]:
    """Run folders whose owner died before the run finished (and that are not marked yet)."""
    if not runs_root.is_dir():
        return []
    stale = []
    for run_dir in sorted(p for p in runs_root.iterdir() if p.is_dir()):
        if (run_dir / FINISHED).exists() or (run_dir / INCOMPLETE).exists():
            continue
        owner = _read_owner(run_dir)
        if owner is not None and not owner_alive(owner):
            stale.append(run_dir)
    return stale


def mark_incomplete(run_dir: Path, reason: str) -> None:
    """Leave the folder for inspection, with a marker that says it is debris and why."""
    marker = {"reason": reason, "owner": _read_owner(run_dir),
              "detected": datetime.now(UTC).isoformat(timespec="seconds")}
    (run_dir / INCOMPLETE).write_text(json.dumps(marker, indent=1))


# --------------------------------------------------------------------------------------------- MLflow


def fail_mlflow_runs(settings: Settings, run_names: list[str], reason: str) -> list[str]:
    """Mark the RUNNING MLflow runs with these names as FAILED; returns their ids."""
    if not run_names or not _tracking_store_exists(settings):
        return []
    from mlflow import MlflowClient

    from chaptering.registry import EXPERIMENT

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    failed = []
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        if run.info.run_name in run_names:
            client.set_tag(run.info.run_id, "chaptering.cleanup", reason[:500])
            client.set_terminated(run.info.run_id, status="FAILED")
            failed.append(run.info.run_id)
    return failed


def _tracking_store_exists(settings: Settings) -> bool:
    """A local SQLite store that was never created holds no runs: do not create one just to look."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).exists()
    return True


# -------------------------------------------------------------------------------------------- Prefect


def _cmdline(pid: int | str) -> list[str]:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _environ(pid: int | str) -> dict[str, str]:
    try:
        raw = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (part.decode("utf-8", "replace").split("=", 1) for part in raw.split(b"\0") if b"=" in part)
    return dict(pairs)  # type: ignore[arg-type]


def _parent(pid: int | str) -> int | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[-1].split()[1])


def _is_python(pid: int) -> bool:
    args = _cmdline(pid)
    return bool(args) and "python" in Path(args[0]).name


def orphaned_prefect_servers(prefect_home: Path) -> list[int]:
    """Pids of ephemeral Prefect servers of this user, for this PREFECT_HOME, whose parent is gone.

    Prefect starts them as `python -m uvicorn ... prefect.server.api.server:create_app` with the parent's
    environment; when the parent dies the server is re-parented to init or a (non-Python) subreaper, so
    "the parent is not a Python process" is how an orphan looks.
    """
    if not _PROC.is_dir():
        return []
    home = str(prefect_home.resolve())
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if PREFECT_SERVER_APP not in _cmdline(entry.name):
            continue
        env = _environ(entry.name)
        if env.get("PREFECT__SERVER_EPHEMERAL") != "1" or not env.get("PREFECT_HOME"):
            continue
        if str(Path(env["PREFECT_HOME"]).resolve()) != home:
            continue
        parent = _parent(entry.name)
        if parent is None or parent == 1 or not _is_python(parent):
            found.append(int(entry.name))
    return sorted(found)


def stop_process(pid: int, grace_s: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after `grace_s`; True once the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    end = time.monotonic() + grace_s
    while time.monotonic() < end:
        if not _exists(pid):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    time.sleep(0.2)
    return not _exists(pid)


def _exists(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan stays a zombie until init reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return True
    return state != "Z"


# ------------------------------------------------------------------------------------------- recover


def recover(settings: Settings, prefect_home: Path | None = None) -> CleanupReport:
    """Clean up after retrains that were killed (see the module docstring); safe to call every start.

    `prefect_home` is Prefect's home folder as Prefect resolved it (the flow passes it); by default the
    one `Settings.prepare` points Prefect at.
    """
    report = CleanupReport()
    for run_dir in stale_run_dirs(settings.state_dir / "runs"):
        owner = _read_owner(run_dir) or {}
        reason = f"process {owner.get('pid')} died before run {run_dir.name} finished"
        mark_incomplete(run_dir, reason)
        report.incomplete_runs.append(run_dir.name)
        try:
            report.mlflow_runs_failed += fail_mlflow_runs(settings, [f"train-{run_dir.name}"], reason)
        except Exception as exc:  # noqa: BLE001 - cleanup must never stop the retrain it precedes
            report.notes.append(f"could not mark MLflow runs of {run_dir.name} FAILED: {exc}")
    prefect_home = prefect_home or settings.state_dir / "prefect"
    if not _PROC.is_dir():
        report.notes.append("no /proc: stale Prefect servers were not looked for")
    for pid in orphaned_prefect_servers(prefect_home):
        if stop_process(pid):
            report.prefect_servers_stopped.append(pid)
        else:
            report.notes.append(f"could not stop orphaned Prefect server {pid}")
    if report:
        log.warning("cleaned up after a killed retrain: %s", report.to_dict())
    return report
