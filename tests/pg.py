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

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_URL = "postgresql+psycopg2://root@127.0.0.1:5432/postgres"
URL_ENV = "CHAPTERING_TEST_PG_URL"  # admin URL of another server (a user that may CREATE DATABASE)


def unreachable(url: str, timeout_s: int = 3) -> str | None:
    """None if a server answers at `url`, else why not (one line)."""
    engine = create_engine(url, connect_args={"connect_timeout": timeout_s})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable", reported to the user
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    finally:
        engine.dispose()


def find_pg_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, else the newest /usr/lib/postgresql/<major>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    candidates.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0, reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster: initdb into `root`, pg_ctl start on a free loopback port."""

    root: Path
    port: int = field(default_factory=_free_port)
    user: str | None = None  # OS user the server runs as (None: this process's)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str, timeout: float = 120) -> None:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, user=self.user,
                              env={**os.environ, "LC_ALL": "C.UTF-8"})
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n{log}")

    def start(self) -> Cluster:
        initdb, pg_ctl = find_pg_bin("initdb"), find_pg_bin("pg_ctl")
        if not (initdb and pg_ctl):
            raise FileNotFoundError("initdb/pg_ctl not found (PATH, /usr/lib/postgresql/*/bin)")
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # initdb refuses to run as root: the folder goes to the server's user
            self.user = self.user or "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        """Stop the server and delete the cluster."""
        pg_ctl = find_pg_bin("pg_ctl")
        try:
            if pg_ctl and (self.data / "postmaster.pid").exists():
                self._run(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PgServer:
    """A server tests may create and drop databases on."""

    admin_url: str
    cluster: Cluster | None = None

    def url(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def _admin(self, sql: str) -> None:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(sql)
        finally:
            engine.dispose()

    def create_database(self, name: str) -> str:
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
