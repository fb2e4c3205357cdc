"""`chaptering evaluate` on the committed held-out set: per-domain figures and the headline, with
intervals, and an F1 within 5 s that an independent scorer reproduces from `predict`'s output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_metrics import _independent_f1
from typer.testing import CliRunner

from chaptering.cli import app
from chaptering.config import PROJECT_ROOT
from chaptering.io import read_transcripts

EVAL = PROJECT_ROOT / "data" / "eval" / "heldout.jsonl"
DOMAINS = {"short", "talks", "lectures", "meetings", "work"}


@pytest.fixture(scope="module")
def equal_json() -> list[dict]:
    result = CliRunner().invoke(app, ["evaluate", "--data", str(EVAL), "--model", "baseline:equal",
                                      "--model", "baseline:equal-oracle", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_has_headline_and_every_domain_with_intervals(equal_json: list[dict]) -> None:
    equal, oracle = equal_json
    assert equal["model"] == "baseline:equal" and oracle["model"] == "baseline:equal-oracle"
    h = equal["headline"]
    assert h["lo"] <= h["mean"] <= h["hi"] and set(h["domains"]) == DOMAINS
    assert set(equal["domains"]) == DOMAINS
    assert h["mean"] == pytest.approx(sum(h["domains"].values()) / len(DOMAINS))
    for d, agg in equal["domains"].items():
        assert {"f1", "f1_k5", "pk", "windowdiff", "boundary_similarity", "title_rouge_l"} <= set(agg)
        assert agg["f1"]["mean"] == pytest.approx(h["domains"][d])
        assert ("f1_5s" in agg) == (d != "meetings")  # meetings have no times: F1 within 5 turns
    assert oracle["domains"]["short"]["abs_count_error"]["mean"] == 0.0  # the oracle knows the count


def test_f1_within_5s_agrees_with_an_independent_scorer(equal_json: list[dict], tmp_path: Path) -> None:
    out = tmp_path / "pred.jsonl"
    result = CliRunner().invoke(app, ["predict", str(EVAL), "--out", str(out), "--model", "baseline:equal"])
    assert result.exit_code == 0, result.output
    preds = {p["id"]: p for p in map(json.loads, out.read_text().splitlines())}
    per_domain: dict[str, list[float]] = {}
    for t in read_transcripts(EVAL):
        if not t.has_times:
            continue
        ref = [t.segments[c.start_segment].start for c in t.chapters][1:]
        hyp = [c["start"] for c in preds[t.id]["chapters"]][1:]
        per_domain.setdefault(t.meta["domain"], []).append(_independent_f1(ref, hyp, 5.0))
    for d, values in per_domain.items():
        assert equal_json[0]["domains"][d]["f1_5s"]["mean"] == pytest.approx(sum(values) / len(values)), d


def test_table_output_puts_the_headline_first() -> None:
    result = CliRunner().invoke(app, ["evaluate", "--data", str(EVAL), "--model", "baseline:single"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| model | headline (macro F1) | short (F1@5s)") and "meetings (F1@5 turns)" in lines[0]
    assert "**talks** (40 transcripts)" in result.stdout


def test_an_interrupted_evaluation_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    from factories import make_transcript

    from chaptering.baselines import make_baseline
    from chaptering.evaluate import evaluate

    transcripts = [make_transcript(30, (0, 10, 20), tid=f"t{i}") for i in range(4)]
    inner = make_baseline("equal", train_mean_chapters=3.0, seed=0)
    seen: list[str] = []

    class Counting:
        name = "counting"

        def predict(self, t):
            seen.append(t.id)
            if len(seen) == 3 and stop:
                raise KeyboardInterrupt  # killed after two transcripts were kept
            return inner.predict(t)

    stop = True
    with pytest.raises(KeyboardInterrupt):
        evaluate(Counting(), transcripts, checkpoint=tmp_path / "partial", progress=False)
    stop = False
    seen.clear()
    resumed, predictions = evaluate(Counting(), transcripts, checkpoint=tmp_path / "partial", progress=False)
    assert seen == ["t2", "t3"]  # t0 and t1 came from the checkpoint
    fresh, _ = evaluate(Counting(), transcripts, progress=False)
    assert [p.id for p in predictions] == ["t0", "t1", "t2", "t3"]
    assert resumed.aggregate == fresh.aggregate
    assert not list((tmp_path / "partial").glob("*.tmp"))


def test_a_reference_report_is_cached_and_its_checkpoint_removed(tmp_path: Path) -> None:
    from factories import make_transcript

    from chaptering.config import DataSettings, Settings
    from chaptering.io import write_jsonl
    from chaptering.model_stages import reference_report

    held = tmp_path / "heldout.jsonl"
    write_jsonl(held, [make_transcript(30, (0, 10, 20), tid=f"h{i}").model_dump(mode="json") for i in range(3)])
    settings = Settings(state_dir=tmp_path / "state", data=DataSettings(eval_path=held)).prepare()
    partial = tmp_path / "partial"
    first = reference_report("baseline:equal", settings, checkpoint=partial)
    assert first.headline["n"] == 3 and not partial.exists()  # stored, so the predictions are not kept
    assert list((settings.cache_dir / "eval").glob("baseline-equal-*.json"))
    assert reference_report("baseline:equal", settings).to_json() == first.to_json()  # from the cache
