"""The held-out set is pinned by MANIFEST.json: a silent edit fails loudly, and the guard finds copies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chaptering.config import PROJECT_ROOT
from chaptering.heldout import contaminated, load_heldout, manifest_path, write_manifest
from chaptering.io import read_transcripts, write_jsonl

EVAL = PROJECT_ROOT / "data" / "eval" / "heldout.jsonl"


def test_committed_eval_set_matches_its_manifest() -> None:
    transcripts = load_heldout(EVAL)
    manifest = json.loads(manifest_path(EVAL).read_text())
    assert len(transcripts) == manifest["count"] == 145
    assert manifest["domains"] == {"short": 60, "talks": 40, "lectures": 7, "meetings": 35, "work": 3}
    assert [t.id for t in transcripts] == manifest["ids"]
    assert all(t.has_times for t in transcripts if t.meta["domain"] != "meetings")  # scored on time
    assert not any(t.has_times for t in transcripts if t.meta["domain"] == "meetings")  # scored on turns


def test_training_data_holds_no_heldout_transcript() -> None:
    train = [t for f in sorted((PROJECT_ROOT / "data" / "train").glob("*.jsonl")) for t in read_transcripts(f)]
    assert len(train) > 200 and contaminated(train, EVAL) == []


def test_moving_a_transcript_to_another_domain_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "heldout.jsonl"
    shutil.copy(EVAL, path)
    write_manifest(path)
    rows = [json.loads(t.model_dump_json()) for t in read_transcripts(path)]
    rows[0]["meta"]["domain"] = "talks"
    write_jsonl(path, rows)
    with pytest.raises(ValueError, match="differs from"):
        load_heldout(path)


def test_edited_eval_set_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "heldout.jsonl"
    shutil.copy(EVAL, path)
    write_manifest(path)
    rows = [json.loads(t.model_dump_json()) for t in read_transcripts(path)]
    rows[0]["chapters"][0]["title"] = "quietly changed"
    write_jsonl(path, rows)
    with pytest.raises(ValueError, match="differs from"):
        load_heldout(path)


def test_guard_finds_eval_transcripts_by_id_and_content() -> None:
    first, second = read_transcripts(EVAL)[:2]
    renamed = second.model_copy(update={"id": "innocent-looking-id"})
    hits = dict(contaminated([first, renamed, first.model_copy(update={"id": f"{first.id}~crop1"})], EVAL))
    assert set(hits) == {first.id, "innocent-looking-id", f"{first.id}~crop1"}
    assert "content matches" in hits["innocent-looking-id"]
