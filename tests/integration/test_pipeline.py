"""The nightly flow end to end on the tiny model: first run registers v1, a re-run with no new data
trains nothing, new feedback trains a challenger with a recorded decision, a failing stage changes
nothing, and `chaptering data build` reuses an unchanged build.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from factories import run_once, small_project

from chaptering import registry
from chaptering.config import Settings
from chaptering.io import read_transcripts


@pytest.fixture
def flow_settings(tmp_path: Path, tiny_dir: Path) -> Settings:
    return small_project(tmp_path, tiny_dir)


def _add_feedback(settings: Settings) -> None:
    from chaptering.feedback import FeedbackStore
    from chaptering.schema import Chapter, FeedbackEvent

    store = FeedbackStore(settings.feedback_db)
    t = read_transcripts(settings.data.inputs[0] / "videos.jsonl")[0]
    predicted = [Chapter(title="Everything", start_segment=0)]
    pid = store.record_prediction(t, predicted, model_version="1")
    store.add(FeedbackEvent(transcript_id=t.id, model_version="1", prediction_id=pid, predicted=predicted,
                            corrected=t.chapters))
    store.close()


def test_first_run_registers_then_noop_then_feedback_challenger(flow_settings: Settings) -> None:
    first = run_once(flow_settings)
    assert first["ingested"]["transcripts"] == 8
    assert first["outcome"].trained and first["decision"].version == "1"
    assert first["decision"].reasons, "every decision carries its reasons"
    assert "Decision" in first["summary"]
    versions = registry.list_versions(flow_settings)
    assert [str(v["version"]) for v in versions] == ["1"]
    champion = registry.champion_version(flow_settings)

    again = run_once(flow_settings)
    assert again["ingested"]["transcripts"] == 0 and not again["outcome"].trained
    assert again["build"].reused and again["build"].fingerprint == first["build"].fingerprint
    assert [str(v["version"]) for v in registry.list_versions(flow_settings)] == ["1"]
    assert registry.champion_version(flow_settings) == champion

    _add_feedback(flow_settings)
    third = run_once(flow_settings)
    assert third["ingested"]["feedback_events"] == 1
    assert third["build"].stats["feedback_dpo_rows"] >= 1
    assert third["outcome"].trained and [r["stage"] for r in third["outcome"].results] == ["sft", "dpo"]
    assert third["decision"].version == "2" and third["decision"].reasons
    decided = {str(v["version"]): v for v in registry.list_versions(flow_settings)}["2"]
    assert decided.get("decision"), "the gate's decision is recorded on the version"


def test_failed_stage_leaves_registry_corpus_and_watermarks(flow_settings: Settings) -> None:
    with pytest.raises(RuntimeError, match="simulated"):
        run_once(flow_settings, fail_at="evaluate")
    assert registry.list_versions(flow_settings) == []
    assert registry.champion_version(flow_settings) is None
    assert not (flow_settings.state_dir / "corpus" / "curated.jsonl").exists()
    # nothing was committed, so the next run sees the same input again and completes
    retry = run_once(flow_settings)
    assert retry["ingested"]["transcripts"] == 8 and retry["decision"].version == "1"


def test_data_build_cli_reuses_unchanged_build(flow_settings: Settings, tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from chaptering.cli import app

    monkeypatch.setenv("CHAPTERING_STATE_DIR", str(flow_settings.state_dir))
    sets = [f"model.base={flow_settings.model.base}", "model.context_tokens=512",
            f"data.eval_path={flow_settings.data.eval_path}"]
    args = ["data", "build", "--out", str(tmp_path / "out"), "--input", str(flow_settings.data.inputs[0])]
    args += list(itertools.chain.from_iterable(("--set", s) for s in sets))
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["sft"]["rows"] > 0 and stats["reused"] is False
    assert (tmp_path / "out" / "quarantine.jsonl").exists()
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert again["reused"] is True and again["fingerprint"] == stats["fingerprint"]


def test_champion_promoted_on_an_older_heldout_set_is_re_evaluated(flow_settings: Settings, monkeypatch) -> None:
    """A new held-out set must not leave every later challenger incomparable with the champion."""
    from chaptering import model_stages, pipeline
    from chaptering.evaluate import Report

    old = Report("models:/chaptering/4", "old.jsonl", "old-set-fp", {})
    monkeypatch.setattr(registry, "champion_report", lambda s: old)
    monkeypatch.setattr(registry, "champion_version", lambda s: "4")
    asked: list[str] = []
    monkeypatch.setattr(model_stages, "reference_report", lambda spec, s: asked.append(spec) or f"report of {spec}")
    assert pipeline.champion_on_heldout(flow_settings) == "report of models:/chaptering/4"
    assert asked == ["models:/chaptering/4"]

    from chaptering.evaluate import fingerprint
    from chaptering.heldout import load_heldout

    current = Report("models:/chaptering/4", "h", fingerprint(load_heldout(flow_settings.data.eval_path)), {})
    monkeypatch.setattr(registry, "champion_report", lambda s: current)
    assert pipeline.champion_on_heldout(flow_settings) is current and asked == ["models:/chaptering/4"]


def test_first_candidate_is_judged_against_baselines_and_base(flow_settings: Settings) -> None:
    first = run_once(flow_settings)
    reasons = " ".join(first["decision"].reasons)
    assert "headline" in reasons and ("best baseline" in reasons)
    assert "baseline:equal" in first["summary"] and "baseline:random" in first["summary"]
