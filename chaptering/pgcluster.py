"""PostgreSQL servers the project can stand up itself: is one answering at a URL, a cluster of our own
(initdb + pg_ctl on a loopback port, for the local stack and for tests where the machine has none), and
creating or dropping databases on a server. Debian's server programs live off PATH, so they are looked
up in /usr/lib/postgresql/*/bin too."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from chaptering.server_process import free_port


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


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster: initdb into `root`, pg_ctl start on a free loopback port."""

    root: Path
    port: int = field(default_factory=free_port)
    user: str | None = None  # OS user the server runs as (None: this process's; as root, postgres)

    def __post_init__(self) -> None:
        if self.user is None and os.geteuid() == 0:  # initdb and pg_ctl refuse to run as root
            self.user = "postgres"

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
        if self.user is not None:  # as root: the folder goes to the server's user
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        if not (self.data / "PG_VERSION").is_file():  # a cluster kept from an earlier start is reused
            self._run(initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self, delete: bool = True) -> None:
        """Stop the server; with `delete`, the cluster's files go too."""
        pg_ctl = find_pg_bin("pg_ctl")
        try:
            if pg_ctl and (self.data / "postmaster.pid").exists():
                self._run(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
        finally:
            if delete:
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

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        if exist_ok and self.has_database(name):
            return self.url(name)
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def has_database(self, name: str) -> bool:
        engine = create_engine(self.admin_url)
        try:
            with engine.connect() as conn:
                return conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is not None
        finally:
            engine.dispose()

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
