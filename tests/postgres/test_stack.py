"""`chaptering stack up/down` for real: PostgreSQL databases, an MLflow server and a Prefect server on
them, the project's deployments, a worker and the service, all answering on free loopback ports; a
second `up` starts nothing twice; `down` leaves no process behind."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest
from servers import free_port
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from chaptering import stack
from chaptering.cli import app
from chaptering.config import ModelSettings, ServeSettings, Settings, StackSettings, get_settings
from chaptering.pgcluster import PgServer
from chaptering.server_process import group_alive

pytestmark = pytest.mark.postgres


@pytest.fixture
def stack_settings(pg_server: PgServer, tmp_path: Path, tiny_dir: Path):
    prefix = f"chaptering_stack_{uuid.uuid4().hex[:8]}"
    settings = Settings(
        state_dir=tmp_path / "state", model=ModelSettings(base=str(tiny_dir), context_tokens=512, max_new_tokens=16),
        serve=ServeSettings(port=free_port()),
        stack=StackSettings(postgres_url=pg_server.admin_url, database_prefix=prefix, mlflow_port=free_port(),
                            prefect_port=free_port(), worker_health_port=free_port()),
    ).prepare()
    try:
        yield settings
    finally:
        stack.down(settings, echo=lambda _: None)
        for part in ("mlflow", "prefect", "feedback"):
            pg_server.drop_database(f"{prefix}_{part}")


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_stack_up_serves_everything_on_postgres_and_down_stops_it(stack_settings: Settings,
                                                                  pg_server: PgServer, monkeypatch) -> None:
    said: list[str] = []
    where = stack.up(stack_settings, echo=said.append)
    assert stack.status(stack_settings) == {"mlflow": True, "prefect": True, "worker": True, "serve": True}
    prefix = stack_settings.stack.database_prefix

    deployments = httpx.post(f"{where.prefect}/api/deployments/filter", json={}, timeout=30).json()
    assert {d["name"] for d in deployments} == {"nightly-retrain", "retrain"}
    workers = httpx.post(f"{where.prefect}/api/work_pools/{stack.POOL}/workers/filter", json={}, timeout=30).json()
    assert len(workers) == 1  # the worker polls the pool the deployments run on
    with create_engine(pg_server.url(f"{prefix}_prefect")).connect() as conn:  # Prefect's own data on Postgres
        assert conn.execute(text("SELECT count(*) FROM deployment")).scalar() == 2

    vtt = (Path(__file__).parents[2] / "data" / "demo" / "seed-home-tour.vtt").read_bytes()
    answer = httpx.post(f"{where.serve}/v1/chapters", files={"file": ("t.vtt", vtt)}, data={"id": "home"}, timeout=120)
    assert answer.status_code == 200 and answer.json()["chapters"]
    with create_engine(pg_server.url(f"{prefix}_feedback")).connect() as conn:  # the service's store
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 1
    assert "registered_models" in _tables(pg_server.url(f"{prefix}_mlflow"))  # MLflow's backend store
    assert httpx.get(f"{where.mlflow}/api/2.0/mlflow/registered-models/search", timeout=30).status_code == 200

    again: list[str] = []
    stack.up(stack_settings, echo=again.append)
    assert sum("already running" in line for line in again) == 4

    pids = stack._pids(stack.stack_dir(stack_settings))
    stack.down(stack_settings, echo=said.append)
    assert not any(group_alive(pids[name]) for name in stack.ORDER)
    assert stack.status(stack_settings) == {"mlflow": False, "prefect": False, "worker": False, "serve": False}
    monkeypatch.setenv("CHAPTERING_STATE_DIR", str(stack_settings.state_dir))
    for key, port in (("SERVE__PORT", stack_settings.serve.port), ("STACK__MLFLOW_PORT", stack_settings.stack.mlflow_port),
                      ("STACK__PREFECT_PORT", stack_settings.stack.prefect_port),
                      ("STACK__WORKER_HEALTH_PORT", stack_settings.stack.worker_health_port)):
        monkeypatch.setenv(f"CHAPTERING_{key}", str(port))
    get_settings.cache_clear()
    try:
        status = CliRunner().invoke(app, ["stack", "status"])
    finally:
        get_settings.cache_clear()
    assert status.exit_code == 1 and "DOWN" in status.output


def test_stack_down_with_nothing_up_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    stack.down(Settings(state_dir=tmp_path / "state"), echo=said.append)
    assert said == ["nothing to stop"]


def test_without_a_server_the_stack_keeps_a_cluster_of_its_own() -> None:
    from chaptering.pgcluster import Cluster, find_pg_bin

    if not (find_pg_bin("initdb") and find_pg_bin("pg_ctl")):
        pytest.skip("initdb/pg_ctl not installed")
    port = free_port()
    # not under pytest's tmp_path: that one is private to root, and as root the server runs as postgres
    state = Path(tempfile.mkdtemp(prefix="chaptering-stack-"))
    state.chmod(0o755)  # the server's user must reach state/stack/postgres, as under a checkout's state/
    settings = Settings(state_dir=state, stack=StackSettings(
        postgres_url=f"postgresql+psycopg2://root@127.0.0.1:{free_port()}/postgres", postgres_port=port))
    root = stack.stack_dir(settings)
    said: list[str] = []
    try:
        server = stack._postgres(settings, root, said.append)
        assert server.cluster is not None and f":{port}/" in server.admin_url and "starting" in said[0]
        server.create_database("chaptering_feedback")
        assert stack._postgres(settings, root, said.append).has_database("chaptering_feedback")  # reused, running
        assert len(said) == 1
        server.cluster.stop(delete=False)  # what `stack down` does: stopped, kept
        again = stack._postgres(settings, root, said.append)
        assert again.has_database("chaptering_feedback")  # the same data after a restart
    finally:
        Cluster(root / "postgres", port=port).stop(delete=True)
        shutil.rmtree(state, ignore_errors=True)


def test_stack_down_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    """pids.json outlived its processes and the pid now names another one: down must not signal it."""
    import json
    import os
    import subprocess

    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        settings = Settings(state_dir=tmp_path / "state")
        root = stack.stack_dir(settings)
        root.mkdir(parents=True)
        (root / "pids.json").write_text(json.dumps({"serve": sleeper.pid, "serve_started": 1}))
        said: list[str] = []
        stack.down(settings, echo=said.append)
        assert "left alone" in said[0] and sleeper.poll() is None
        assert json.loads((root / "pids.json").read_text()) == {}
    finally:
        os.killpg(sleeper.pid, 9)
        sleeper.wait()
