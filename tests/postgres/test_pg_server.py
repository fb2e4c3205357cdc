"""The fixture's fallback: a throwaway initdb cluster really starts, serves, and goes away."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from pg import Cluster, PgServer, find_pg_bin, start_server, unreachable
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.postgres


def test_throwaway_cluster_serves_and_is_removed() -> None:
    if not (find_pg_bin("initdb") and find_pg_bin("pg_ctl")):
        pytest.skip("initdb/pg_ctl not installed (apt-get install postgresql-15)")
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="chaptering-pg-"))).start()
    try:
        server = PgServer(cluster.url, cluster)
        url = server.create_database("scratch")
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == "scratch"
            assert int(conn.execute(text("SHOW server_version_num")).scalar()) >= 150000
        engine.dispose()
        server.drop_database("scratch")
    finally:
        cluster.stop()
    assert unreachable(cluster.url, timeout_s=1) is not None
    assert not cluster.root.exists()


def test_no_server_falls_back_to_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing answers at the configured URL: the helper starts a cluster instead of skipping."""
    if not (find_pg_bin("initdb") and find_pg_bin("pg_ctl")):
        pytest.skip("initdb/pg_ctl not installed (apt-get install postgresql-15)")
    monkeypatch.setenv("CHAPTERING_TEST_PG_URL", "postgresql+psycopg2://root@127.0.0.1:9/postgres")
    server = start_server()
    try:
        assert server.cluster is not None and unreachable(server.admin_url) is None
    finally:
        server.cluster.stop()


def test_each_test_has_a_database_of_its_own(pg_url: str, pg_server: PgServer) -> None:
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        name = conn.execute(text("SELECT current_database()")).scalar()
        assert name.startswith("chaptering_test_") and name != "postgres"
        assert conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar() == 0
    engine.dispose()
