"""The local production stack, one command up and one down: PostgreSQL (the MLflow backend store, the
Prefect server's database and the feedback store), an MLflow server, a Prefect server holding the
project's deployments, a process worker on `chaptering-pool`, and the service; all on loopback.

Each server runs in a process group of its own with its log under state/stack/logs/, and its pid is
written to state/stack/pids.json as soon as it answers its health URL, so `down` stops whatever came
up even when a later start failed. `up` starts only what is not answering already. The children read
one config file (state/stack/chaptering.yaml: these settings, with the stack's MLflow and feedback
URLs), and `state/stack/env.sh` gives a shell the same view (`chaptering models` then reads the
stack's registry). A team runs the same programs on separate machines (docs/operations.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from chaptering.config import PROJECT_ROOT, Settings
from chaptering.pgcluster import Cluster, PgServer, unreachable
from chaptering.server_process import answers, group_alive, start_server, stop_group

POOL = "chaptering-pool"
BIN = Path(sys.executable).parent
ORDER = ("mlflow", "prefect", "worker", "serve")  # start order; `down` goes the other way


@dataclass(frozen=True)
class Urls:
    """Where each part answers (and what `status` asks)."""

    mlflow: str
    prefect: str
    worker_health: str
    serve: str

    def health(self, name: str) -> str:
        return {"mlflow": f"{self.mlflow}/health", "prefect": f"{self.prefect}/api/health",
                "worker": f"{self.worker_health}/health", "serve": f"{self.serve}/healthz"}[name]


def stack_dir(settings: Settings) -> Path:
    return settings.state_dir / "stack"


def urls(settings: Settings) -> Urls:
    st, host = settings.stack, settings.stack.host
    return Urls(f"http://{host}:{st.mlflow_port}", f"http://{host}:{st.prefect_port}",
                f"http://{host}:{st.worker_health_port}", f"http://{host}:{settings.serve.port}")


def _pids(root: Path) -> dict[str, int]:
    path = root / "pids.json"
    return {k: int(v) for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def _save_pids(root: Path, pids: dict[str, int]) -> None:
    tmp = root / "pids.json.tmp"
    tmp.write_text(json.dumps(pids, indent=2))
    tmp.replace(root / "pids.json")


def _start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None if it is gone: a pid written to
    pids.json is only signalled while it still names the process `up` started."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _postgres(settings: Settings, root: Path, echo: Callable[[str], None]) -> PgServer:
    """The server at stack.postgres_url, else the stack's own cluster (started, or reused if running)."""
    st = settings.stack
    if unreachable(st.postgres_url) is None:
        return PgServer(st.postgres_url)
    cluster = Cluster(root / "postgres", port=st.postgres_port)
    if unreachable(cluster.url) is not None:
        echo(f"postgres: nothing answers at {st.postgres_url}; starting the stack's own cluster on port "
             f"{st.postgres_port} ({cluster.root})")
        cluster.start()
    return PgServer(cluster.url, cluster)


def _sqlalchemy_url(server: PgServer, database: str, driver: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(server.url(database)).set(drivername=f"postgresql+{driver}")
    return url.render_as_string(hide_password=False)


def up(settings: Settings, echo: Callable[[str], None] = print) -> Urls:
    """Start every part that is not answering yet; returns where they answer."""
    root, where, st = stack_dir(settings), urls(settings), settings.stack
    (root / "logs").mkdir(parents=True, exist_ok=True)
    pids = _pids(root)
    pg = _postgres(settings, root, echo)
    if pg.cluster is not None:  # recorded now: `down` stops it (pg_ctl) even if a later part fails
        pids["postgres_cluster"] = 0
        _save_pids(root, pids)
    dbs = {part: pg.create_database(f"{st.database_prefix}_{part}", exist_ok=True)
           for part in ("mlflow", "prefect", "feedback")}
    child = settings.model_copy(update={"mlflow_tracking_uri": where.mlflow, "feedback_url": dbs["feedback"]})
    config = root / "chaptering.yaml"
    # secrets stay in the environment (which the children inherit), not in a file
    config.write_text(yaml.safe_dump(child.model_dump(mode="json", exclude={"config_file": True, "serve": {"token"}})))
    env = {**os.environ, "CHAPTERING_CONFIG_FILE": str(config), "PREFECT_HOME": str(root / "prefect"),
           "PREFECT_API_URL": f"{where.prefect}/api", "PREFECT_UI_API_URL": f"{where.prefect}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": _sqlalchemy_url(pg, f"{st.database_prefix}_prefect", "asyncpg"),
           "PREFECT_WORKER_WEBSERVER_HOST": st.host, "PREFECT_WORKER_WEBSERVER_PORT": str(st.worker_health_port)}
    for key in ("CHAPTERING_MLFLOW_TRACKING_URI", "CHAPTERING_FEEDBACK_URL"):  # the file holds the stack's
        env.pop(key, None)
    commands = {
        "mlflow": [str(BIN / "mlflow"), "server", "--backend-store-uri", dbs["mlflow"], "--artifacts-destination",
                   str(root / "mlartifacts"), "--host", st.host, "--port", str(st.mlflow_port), "--workers", "1"],
        "prefect": [str(BIN / "prefect"), "server", "start", "--host", st.host, "--port", str(st.prefect_port)],
        "worker": [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--with-healthcheck"],
        "serve": [str(BIN / "chaptering"), "serve", "--host", st.host, "--port", str(settings.serve.port)],
    }
    for name in ORDER:
        if name == "worker":  # the pool and the deployments first (both idempotent)
            _prefect(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
            _prefect(env, "--no-prompt", "deploy", "--all")
        health = where.health(name)
        if name in pids and group_alive(pids[name]) and answers(health):
            echo(f"{name}: already running (pid {pids[name]})")
            continue
        proc = start_server(commands[name], health, root / "logs" / f"{name}.log", env=env, cwd=PROJECT_ROOT,
                            name=name, ready_s=st.ready_s)
        pids[name] = proc.pid
        started = _start_time(proc.pid)
        if started is not None:
            pids[f"{name}_started"] = int(started)
        _save_pids(root, pids)
        echo(f"{name}: up (pid {proc.pid}, log {root / 'logs' / f'{name}.log'})")
    (root / "env.sh").write_text(
        f"export CHAPTERING_CONFIG_FILE={config}\nexport PREFECT_API_URL={where.prefect}/api\n")
    return where


def _prefect(env: dict[str, str], *args: str) -> None:
    out = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n"
                           f"{out.stderr[-2000:]}")


def down(settings: Settings, echo: Callable[[str], None] = print) -> None:
    """Stop every part `up` started, the service first; the stack's own PostgreSQL cluster (if it made
    one) is stopped but kept, so the registry and the feedback survive the next `up`."""
    root = stack_dir(settings)
    pids = _pids(root)
    if not pids:
        echo("nothing to stop")
        return
    for name in reversed(ORDER):
        if name in pids:
            pid, started = pids.pop(name), pids.pop(f"{name}_started", None)
            now = _start_time(pid)
            if now is not None and started is not None and int(now) != started:
                echo(f"{name}: pid {pid} is another process now (the stack's one is gone); left alone")
            else:  # still ours, or the leader exited and its group (if any) is ours
                stop_group(pid)
                echo(f"{name}: stopped")
            _save_pids(root, pids)
    if pids.pop("postgres_cluster", None) is not None:
        Cluster(root / "postgres", port=settings.stack.postgres_port).stop(delete=False)
        echo("postgres: the stack's cluster stopped (kept)")
    _save_pids(root, pids)


def status(settings: Settings) -> dict[str, bool]:
    """Whether each part answers its health URL now."""
    where = urls(settings)
    return {name: answers(where.health(name)) for name in ORDER}
