"""The feedback store's Alembic migrations on PostgreSQL and SQLite: one schema, the models' schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from chaptering import migrations
from chaptering.config import PROJECT_ROOT
from chaptering.feedback import Base, FeedbackStore

pytestmark = pytest.mark.postgres


def schema(engine: Engine) -> dict[str, Any]:
    """Tables, columns (generic type, length, nullability), primary keys and indexes, backend-neutral."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        columns = {
            c["name"]: (c["type"]._type_affinity.__name__, getattr(c["type"], "length", None), c["nullable"])
            for c in insp.get_columns(table)
        }
        indexes = {(i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table)}
        out[table] = {"columns": columns, "pk": insp.get_pk_constraint(table)["constrained_columns"],
                      "indexes": indexes}
    return out


def _check_cli(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chaptering.migrations", "--url", url, "check"],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT, check=False)


def test_postgres_and_sqlite_get_the_same_schema(pg_url: str, tmp_path: Path) -> None:
    pg, lite = create_engine(pg_url), create_engine(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        assert migrations.upgrade(pg) == migrations.upgrade(lite) == migrations.head()
        on_pg, on_lite = schema(pg), schema(lite)
        assert set(on_pg) == {"predictions", "feedback_events", migrations.VERSION_TABLE}
        assert on_pg == on_lite
        # and it is the models' schema: what `alembic check` would say
        assert migrations.diff(pg) == [] and migrations.diff(lite) == []
        assert set(Base.metadata.tables) == set(on_pg) - {migrations.VERSION_TABLE}
    finally:
        pg.dispose()
        lite.dispose()


def test_check_reports_a_drift(pg_url: str) -> None:
    """The check is not vacuous: a column the models lack is reported (exit 1), and goes away with it."""
    engine = create_engine(pg_url)
    try:
        migrations.upgrade(engine)
        assert _check_cli(pg_url).returncode == 0
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE feedback_events ADD COLUMN source_app VARCHAR(40)"))
        assert [d[0] for d in migrations.diff(engine)] == ["remove_column"]
        result = _check_cli(pg_url)
        assert result.returncode == 1 and "source_app" in result.stdout
    finally:
        engine.dispose()


def test_downgrade_to_nothing_and_back(pg_url: str) -> None:
    """Every migration has a working way back, so a bad release can be undone on Postgres."""
    from alembic import command

    engine = create_engine(pg_url)
    try:
        migrations.upgrade(engine)
        with engine.begin() as conn:
            command.downgrade(migrations.alembic_config(conn), "0001")
        assert "idempotency_key" not in {c["name"] for c in inspect(engine).get_columns("feedback_events")}
        with engine.begin() as conn:
            command.downgrade(migrations.alembic_config(conn), "base")
        assert set(inspect(engine).get_table_names()) == {migrations.VERSION_TABLE}
        migrations.upgrade(engine)
        assert migrations.diff(engine) == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("with_key", [False, True], ids=["before-idempotency-key", "with-idempotency-key"])
def test_a_pre_migration_postgres_store_is_adopted(pg_url: str, with_key: bool) -> None:
    """A Postgres store made by the old create_all keeps its rows and its id sequence."""
    engine = create_engine(pg_url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        if not with_key:
            conn.execute(text("DROP INDEX ix_feedback_events_idempotency_key"))
            conn.execute(text("ALTER TABLE feedback_events DROP COLUMN idempotency_key"))
        conn.execute(text("INSERT INTO feedback_events (transcript_id, model_version, predicted, rating, user_id, "
                          "created_at) VALUES ('t1', '3', '[]', 'accept', 'u', now())"))
    engine.dispose()
    store = FeedbackStore(pg_url)
    try:
        assert [i for i, _, _ in store.events_after(0)] == [1]
        assert migrations.diff(store.engine) == []
        with store.engine.begin() as conn:
            assert migrations.current(conn) == migrations.head()
            # the sequence carried over: the next id is 2, not a second 1
            conn.execute(text("INSERT INTO feedback_events (transcript_id, model_version, predicted, rating, "
                              "user_id, created_at, idempotency_key) VALUES ('t1', '3', '[]', 'accept', 'u', "
                              "now(), 'k')"))
        assert [i for i, _, _ in store.events_after(0)] == [1, 2]
    finally:
        store.close()
