"""Alembic migrations of the feedback store, run by code (no alembic.ini) when a store opens.

`upgrade` brings a database to the newest revision under a lock, so a service and a nightly flow that
open the same fresh store at once do not both create its tables: a Postgres advisory lock, or SQLite's
write lock taken up front (``BEGIN IMMEDIATE``). A store created before migrations existed (tables,
no version table) is adopted: stamped with the revision its columns match, then upgraded, rows kept.

The version table is ``feedback_alembic_version``, not Alembic's default, because MLflow keeps its own
``alembic_version`` and the two may share one Postgres database.

From a shell (the URL is the settings' ``feedback_url``, or ``--url``):
``python -m chaptering.migrations upgrade | current | check | revision -m "add a column"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection, Engine

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "feedback_alembic_version"
LOCK_KEY = 0x63686170746572  # pg_advisory_xact_lock key of the feedback-store migrations ("chapter")
# What the store looked like before migrations, by revision: the first create_all schema, then the one
# with the idempotency key (added by hand at start-up until migrations took over).
_LEGACY_TABLES = {"predictions", "feedback_events"}
_LEGACY_MARKERS = (("0002", "idempotency_key"),)
_LEGACY_BASE = "0001"


class MigrationError(RuntimeError):
    """The database holds something the migrations cannot safely take over."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built in code: the script folder is this package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")  # versions/0003_add_a_column.py
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision in versions/."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise MigrationError(f"chaptering/migrations/versions has {len(heads)} heads {heads}: merge them")
    return heads[0]


def current(conn: Connection) -> str | None:
    """The revision the database on `conn` is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def _where(conn: Connection) -> str:
    return conn.engine.url.render_as_string(hide_password=True)


def _lock(conn: Connection) -> None:
    """Hold the migration lock until `conn` commits: other openers wait, then find the work done."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now, not at the first CREATE
    elif dialect == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})


def _legacy_revision(conn: Connection) -> str | None:
    """The revision a database created before migrations matches, or None if it holds no store."""
    insp = inspect(conn)
    found = _LEGACY_TABLES & set(insp.get_table_names())
    if not found:
        return None
    if found != _LEGACY_TABLES:
        raise MigrationError(
            f"{_where(conn)}: has table(s) {sorted(found)} but not {sorted(_LEGACY_TABLES - found)} and no "
            f"{VERSION_TABLE}: not a feedback store this code made; refusing to adopt it"
        )
    columns = {c["name"] for c in insp.get_columns("feedback_events")}
    for revision, column in reversed(_LEGACY_MARKERS):
        if column in columns:
            return revision
    return _LEGACY_BASE


def upgrade(engine: Engine) -> str:
    """Bring the store at `engine` to the newest revision (adopting a pre-migration store); returns it."""
    from alembic import command

    target = head()
    with engine.connect() as conn:
        if current(conn) == target:  # the common case: no lock, no writes
            return target
        conn.rollback()
        _lock(conn)
        cfg = alembic_config(conn)
        if current(conn) is None:
            legacy = _legacy_revision(conn)
            if legacy is not None:
                command.stamp(cfg, legacy)
        command.upgrade(cfg, "head")
        conn.commit()
    return target


def diff(engine: Engine) -> list[object]:
    """What autogenerate sees between the models and the database at `engine` ([] when they agree):
    `alembic check` for one database."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from chaptering.feedback_tables import Base

    def include_name(name: str | None, type_: str, parent_names: object) -> bool:
        return type_ != "table" or name in Base.metadata.tables

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True, "include_name": include_name}
        )
        return list(compare_metadata(ctx, Base.metadata))


def revision(message: str, engine: Engine) -> Path:
    """Write versions/NNNN_<message>.py: the autogenerated difference between the models and the
    database at `engine` (upgraded to head first). Read it before committing: autogenerate misses
    renames and data moves."""
    from alembic import command

    upgrade(engine)
    number = int(head()) + 1
    with engine.connect() as conn:
        script = command.revision(alembic_config(conn), message=message, autogenerate=True, rev_id=f"{number:04d}")
    if script is None or isinstance(script, list):  # pragma: no cover - one head, one script
        raise MigrationError("alembic wrote no single revision")
    return Path(script.path)
