"""MLflow's backend store on a real PostgreSQL, driven through the project's registry and gate, sharing
its database with the feedback store (each keeps its own Alembic version table)."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import scored_report
from sqlalchemy import create_engine, text

from chaptering import migrations, registry
from chaptering.config import ModelSettings, Settings
from chaptering.evaluate import Report
from chaptering.feedback import FeedbackStore
from chaptering.gate import gate

pytestmark = pytest.mark.postgres


def report(f1: float, pk: float, name: str = "m") -> Report:
    """Two domains of 20 transcripts each, primary F1 spread evenly around `f1` (as tests/test_registry)."""
    spread = [f1 + 0.1 * ((i % 5) - 2) / 2 for i in range(20)]
    return scored_report(name, {"short": spread, "talks": spread}, pk=pk)


def test_registry_on_postgres(pg_url: str, tmp_path: Path, tiny_dir: Path, adapter_dir: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a stray ./mlruns would show up here
    s = Settings(state_dir=tmp_path / "state", mlflow_tracking_uri=pg_url, feedback_url=pg_url,
                 model=ModelSettings(base=str(tiny_dir), context_tokens=512, max_new_tokens=16)).prepare()
    assert s.tracking_uri == pg_url
    registry.configure(s)
    base = report(0.10, 0.50, name="base")

    def log(rep: Report) -> str:
        return registry.log_candidate(adapter_dir, s.model.base, rep, params={"lora_r": 4}, tags={},
                                      plots=[], settings=s).version

    first = report(0.30, 0.40)
    v1 = log(first)
    registry.decide_and_promote(v1, gate(first, registry.champion_report(s), [base], s.gate), s)
    assert registry.champion_version(s) == v1
    better = report(0.45, 0.35)
    v2 = log(better)
    verdict = gate(better, registry.champion_report(s), [base], s.gate)
    assert verdict.promote, verdict.reasons
    registry.decide_and_promote(v2, verdict, s)
    assert registry.champion_version(s) == v2 != v1
    rows = {r["version"]: r for r in registry.list_versions(s)}
    assert rows[v2]["aliases"] == ["challenger", "champion"] and rows[v1]["aliases"] == []
    assert rows[v2]["previous_champion"] == v1
    assert registry.champion_report(s).metric("headline") == pytest.approx(0.45)

    # it really is Postgres holding the registry: the alias row moved there
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        aliases = dict(conn.execute(text("SELECT alias, version FROM registered_model_aliases "
                                         "WHERE name = :n"), {"n": s.registered_model}).fetchall())
    assert aliases == {"champion": int(v2), "challenger": int(v2)}

    assert registry.rollback(s) == v1
    assert registry.champion_version(s) == v1

    # the feedback store migrates beside MLflow's tables in the same database, touching none of them
    store = FeedbackStore(s.feedback_db)
    try:
        assert store.count() == 0
        assert migrations.diff(store.engine) == []
    finally:
        store.close()
    with engine.connect() as conn:
        mlflow_version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        ours = conn.execute(text(f"SELECT version_num FROM {migrations.VERSION_TABLE}")).scalar()
    engine.dispose()
    assert mlflow_version and ours == migrations.head() and mlflow_version != ours
    assert registry.champion_version(s) == v1  # MLflow still reads its store
    assert not (tmp_path / "mlruns").exists()
