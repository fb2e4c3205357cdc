"""The command line as a user types it: predict a VTT, evaluate with --json, list an empty registry, and
clear errors (exit 2, the file named) for a bad model spec or a missing input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chaptering import config
from chaptering.cli import app
from chaptering.config import PROJECT_ROOT

DEMO = PROJECT_ROOT / "data" / "demo" / "seed-home-tour.vtt"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CHAPTERING_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    config.get_settings.cache_clear()
    yield CliRunner()
    config.get_settings.cache_clear()


def test_predict_a_vtt_with_a_baseline(cli, tmp_path: Path):
    out = tmp_path / "pred.jsonl"
    result = cli.invoke(app, ["predict", str(DEMO), "--out", str(out), "--model", "baseline:equal"])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["model"] == "baseline:equal" and row["chapters"][0]["start_segment"] == 0
    assert all(c["title"] for c in row["chapters"])


def test_evaluate_json_has_the_headline_and_domains(cli, tmp_path: Path):
    from chaptering.heldout import load_heldout
    from chaptering.io import write_jsonl

    data = tmp_path / "eval.jsonl"
    picked = [t for t in load_heldout(PROJECT_ROOT / "data" / "eval" / "heldout.jsonl")
              if t.meta.get("domain") in ("short", "meetings")]
    write_jsonl(data, [json.loads(t.model_dump_json()) for t in picked[:3] + picked[-3:]])
    result = cli.invoke(app, ["evaluate", "--data", str(data), "--model", "baseline:equal", "--json"])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    assert report["model"] == "baseline:equal" and {"mean", "lo", "hi"} <= set(report["headline"])
    assert set(report["domains"]) == {"short", "meetings"}


def test_models_on_an_empty_registry(cli):
    result = cli.invoke(app, ["models"])
    assert result.exit_code == 0, result.output


def test_bad_model_spec_and_missing_input_fail_clearly(cli, tmp_path: Path):
    result = cli.invoke(app, ["predict", str(DEMO), "--out", str(tmp_path / "p.jsonl"), "--model", "nonsense"])
    assert result.exit_code == 2 and "nonsense" in result.output
    missing = tmp_path / "nope.vtt"
    result = cli.invoke(app, ["predict", str(missing), "--out", str(tmp_path / "p.jsonl"), "--model", "baseline:equal"])
    assert result.exit_code == 2 and "nope.vtt" in result.output
