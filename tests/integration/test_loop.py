"""The whole loop on the tiny model: serve champion v1, users correct its chapters through the API,
the nightly Prefect flow turns each correction into boundary labels and title DPO pairs and trains v2,
the gate promotes it, and the running service answers with v2 without a restart, with chapters closer
to what the users said."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from factories import run_once, small_project
from fastapi.testclient import TestClient

from chaptering import config, registry
from chaptering.config import GateSettings
from chaptering.datasets import load_rows
from chaptering.io import read_transcripts
from chaptering.serve import create_app


def test_feedback_retrain_hot_swap(tmp_path: Path, tiny_dir: Path, monkeypatch) -> None:
    # a permissive gate: this test is about the plumbing, not about a random model getting better
    settings = small_project(tmp_path, tiny_dir).model_copy(
        update={"gate": GateSettings(min_lower_bound=-1.0, max_domain_f1_drop=1.0, max_pk_regression=1.0,
                                         max_b_regression=1.0, max_unusable_regression=1.0)})
    settings.serve.poll_seconds = 3600.0  # reload only when the test says so
    first = run_once(settings)
    v1 = first["decision"].version
    if registry.champion_version(settings) != v1:  # the first gate compares against the base model
        registry.promote(v1, settings, reason="test: start the loop from v1")

    transcripts = read_transcripts(settings.data.inputs[0] / "videos.jsonl")[:2]
    before: dict[str, list[int]] = {}
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/model").json()["version"] == v1
        for t in transcripts:
            served = client.post("/v1/chapters", json=json.loads(t.model_dump_json(exclude={"chapters"}))).json()
            assert served["model_version"] == v1
            before[t.id] = [c["start_segment"] for c in served["chapters"]]
            edit = {"transcript_id": t.id, "model_version": v1, "prediction_id": served["prediction_id"],
                    "predicted": [{"title": c["title"], "start_segment": c["start_segment"]}
                                  for c in served["chapters"]],
                    "corrected": [json.loads(c.model_dump_json()) for c in t.chapters], "user_id": "editor"}
            if edit["predicted"] == edit["corrected"]:
                edit["corrected"] = edit["corrected"][:1]  # the user merged chapters: still an edit
            assert client.post("/v1/feedback", json=edit).status_code == 201, edit

        # the nightly flow, through Prefect, configured the way a deployment would be
        cfg = tmp_path / "chaptering.yaml"
        cfg.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"config_file"})))
        monkeypatch.setenv("CHAPTERING_CONFIG_FILE", str(cfg))
        config.get_settings.cache_clear()
        from flows.nightly import nightly_retrain

        try:
            result = nightly_retrain()
        finally:
            config.get_settings.cache_clear()
        assert result["trained"] and result["decision"]["promoted"], result
        v2 = result["decision"]["version"]
        assert v2 != v1 and registry.champion_version(settings) == v2

        # every correction became preference pairs in the dataset the flow trained on
        run_dir = Path(result["run_dir"])
        build = json.loads((run_dir / "train" / "sft" / "adapter" / "training.json").read_text())
        assert build["steps"] >= 1
        built = [p for p in (settings.state_dir / "datasets").iterdir() if (p / "dpo").is_dir()]
        origins = {(r["id"], r["origin"]) for p in built for r in load_rows(p / "dpo")
                   if str(r["origin"]).startswith("feedback")}
        assert {t.id for t in transcripts} <= {i for i, _ in origins}
        assert (run_dir / "train" / "dpo" / "adapter").is_dir()

        client.app.state.reload_now()  # what the poller does every serve.poll_seconds
        assert client.get("/v1/model").json()["version"] == v2
        again = client.post("/v1/chapters", json=json.loads(transcripts[0].model_dump_json(exclude={"chapters"})))
        assert again.status_code == 200 and again.json()["model_version"] == v2

        # the corrections were boundary labels too: v2 places chapters closer to what the users said
        from chaptering.decode import primary_f1

        after = {t.id: [c["start_segment"] for c in client.post(
            "/v1/chapters", json=json.loads(t.model_dump_json(exclude={"chapters"}))).json()["chapters"]]
            for t in transcripts}
        assert after != before
        assert sum(primary_f1(t, after[t.id]) - primary_f1(t, before[t.id]) for t in transcripts) > 0
