"""PostgreSQL for tests: the machine's server, or a throwaway initdb cluster, and a database per test.

`pg_server` (session) answers with the server at CHAPTERING_TEST_PG_URL (default: the one the project's
machines start, ``postgresql+psycopg2://root@127.0.0.1:5432/postgres``, trust auth). Where nothing
answers there, it starts a cluster of its own with Debian's initdb/pg_ctl (PATH, then
/usr/lib/postgresql/*/bin) in a temporary folder on a free loopback port, and stops it at the end of the
session; as root, the cluster runs as the ``postgres`` user (initdb refuses root). It skips only when
neither is possible, and says why. `pg_url` gives each test a database of its own, created before the
test and dropped (WITH FORCE: a leaked connection must not keep it alive) after it.

Use them from a test folder's conftest.py: ``from pg import pg_server, pg_url  # noqa: F401``.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from chaptering.pgcluster import Cluster, PgServer, find_pg_bin, unreachable

DEFAULT_URL = "postgresql+psycopg2://root@127.0.0.1:5432/postgres"
URL_ENV = "CHAPTERING_TEST_PG_URL"  # admin URL of another server (a user that may CREATE DATABASE)


def start_server() -> PgServer:
    """The server at CHAPTERING_TEST_PG_URL / the default URL, else a throwaway cluster in a new
    temporary folder (its own, not pytest's: that one is private to root, and the server may not be);
    pytest.skip (with both reasons) only if neither can be had."""
    url = os.environ.get(URL_ENV, DEFAULT_URL)
    why = unreachable(url)
    if why is None:
        return PgServer(url)
    if not (find_pg_bin("initdb") and find_pg_bin("pg_ctl")):
        where = URL_ENV if URL_ENV in os.environ else "the default URL"
        pytest.skip(f"no PostgreSQL: {make_url(url).render_as_string(hide_password=True)} ({where}) does "
                    f"not answer ({why}) and initdb/pg_ctl are not installed (apt-get install postgresql-15)")
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="chaptering-pg-")))
    try:
        cluster.start()  # installed but failing is an error, not a skip
    except BaseException:
        cluster.stop()
        raise
    return PgServer(cluster.url, cluster)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_server()
    try:
        yield server
    finally:
        if server.cluster is not None:
            server.cluster.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A database of this test's own: a psycopg2 SQLAlchemy URL to it."""
    name = f"chaptering_test_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


__all__ = ["Cluster", "PgServer", "find_pg_bin", "pg_server", "pg_url", "start_server", "unreachable"]
