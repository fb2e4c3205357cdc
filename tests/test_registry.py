"""Registry: log + register adapters, gate, promote, roll back, fetch, load as pyfunc, and a real server.

Everything runs on a tiny random Llama with the real SmolLM2 tokenizer, in a per-test state folder,
with the current directory moved to tmp so a stray ./mlruns would be caught.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from factories import make_transcript, scored_report

from chaptering import registry
from chaptering.config import ModelSettings, Settings
from chaptering.evaluate import Report
from chaptering.gate import Verdict, gate

FP = "evalset-fp"


def report(f1: float, pk: float, unusable: float = 0.0, fp: str = FP, name: str = "m") -> Report:
    """Two domains of 20 transcripts each, primary F1 spread evenly around `f1`."""
    spread = [f1 + 0.1 * ((i % 5) - 2) / 2 for i in range(20)]
    return scored_report(name, {"short": spread, "talks": spread}, fp=fp, pk=pk, unusable=unusable)


@pytest.fixture(scope="module")
def blank_db(tmp_path_factory) -> Path:
    """An empty, migrated MLflow SQLite store: copying it saves each test MLflow's ~2 s of migrations."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("blank") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def reg(tmp_path: Path, tiny_dir: Path, blank_db: Path, monkeypatch) -> Settings:
    monkeypatch.chdir(tmp_path)
    s = Settings(state_dir=tmp_path / "state",
                 model=ModelSettings(base=str(tiny_dir), context_tokens=512, max_new_tokens=16)).prepare()
    shutil.copy(blank_db, s.state_dir / "mlflow.db")
    registry.configure(s)
    return s


def log(s: Settings, adapter: Path, rep: Report | None, **tags) -> str:
    cand = registry.log_candidate(adapter, s.model.base, rep, params={"lora_r": 4}, tags=tags, plots=[],
                                  settings=s)
    return cand.version


# --- lifecycle on a local store ------------------------------------------------------------------


def test_promotion_refusal_and_rollback(reg: Settings, adapter_dir: Path, tmp_path: Path):
    base = report(0.10, 0.50, name="base")
    with pytest.raises(LookupError, match="no champion yet"):
        registry.fetch_model("champion", reg)
    assert registry.champion_report(reg) is None

    first = report(0.30, 0.40)
    v1 = log(reg, adapter_dir, first, dataset_fingerprint="d1", train_config="c1")
    d1 = gate(first, registry.champion_report(reg), [base], reg.gate)
    assert d1.promote
    registry.decide_and_promote(v1, d1, reg)
    assert registry.champion_version(reg) == v1
    assert registry.champion_report(reg).metric("headline") == pytest.approx(0.30)
    assert registry.find_version(reg, dataset_fingerprint="d1", train_config="c1") == v1
    assert registry.find_version(reg, dataset_fingerprint="d2", train_config="c1") is None

    worse = report(0.25, 0.45)
    v2 = log(reg, adapter_dir, worse)
    d2 = gate(worse, registry.champion_report(reg), [base], reg.gate)
    assert not d2.promote
    registry.decide_and_promote(v2, d2, reg)
    assert registry.champion_version(reg) == v1

    better = report(0.45, 0.35)
    v3 = log(reg, adapter_dir, better)
    d3 = gate(better, registry.champion_report(reg), [base], reg.gate)
    assert d3.promote, d3.reasons
    registry.decide_and_promote(v3, d3, reg)
    assert registry.champion_version(reg) == v3

    rows = {r["version"]: r for r in registry.list_versions(reg)}
    assert [r["version"] for r in registry.list_versions(reg)] == [v3, v2, v1]
    assert rows[v3]["aliases"] == ["challenger", "champion"] and rows[v1]["aliases"] == []
    assert rows[v3]["previous_champion"] == v1
    assert rows[v2]["decision"] == "rejected" and "FAIL: headline" in rows[v2]["decision_reasons"]
    assert rows[v1]["decision"] == "promoted"
    assert rows[v3]["metrics"]["headline"] == pytest.approx(0.45)
    assert {"headline_lo", "short_f1", "talks_pk", "talks_boundary_similarity", "unusable"} <= set(rows[v3]["metrics"])

    from mlflow import MlflowClient

    client = MlflowClient()
    mv = client.get_model_version(reg.registered_model, v3)
    # the version keeps a few readable tags; the figures and the gate's reasons are on its run
    assert set(mv.tags) == {"base_model", "eval_fingerprint", "decision", "previous_champion"}
    assert mv.tags["base_model"] == reg.model.base and mv.tags["eval_fingerprint"] == FP
    assert mv.description.startswith("promoted: headline 0.450 vs champion 0.300")
    assert client.get_model_version(reg.registered_model, v2).description.startswith("rejected (")
    run = client.get_run(rows[v3]["run_id"]).data  # every figure, per domain, for the compare view
    assert run.metrics["f1/talks"] == pytest.approx(0.45) and run.metrics["pk/short"] == pytest.approx(0.35)
    assert run.metrics["headline_lo"] < run.metrics["headline"] < run.metrics["headline_hi"]
    assert run.tags["git_commit"] and run.tags["decision"] == "promoted" and run.tags["registered_version"] == v3
    assert "ok: headline" in run.tags["decision_reasons"]
    assert rows[v3]["prompt_version"] == run.tags["prompt_version"]
    decision_md = client.download_artifacts(rows[v3]["run_id"], "decision.md", str(tmp_path))
    assert f"Version {v3}: promoted" in Path(decision_md).read_text()

    assert registry.rollback(reg) == v1
    assert registry.champion_version(reg) == v1
    with pytest.raises(LookupError, match="no previous champion"):
        registry.rollback(reg)
    registry.promote(v2, reg, reason="manual: test")
    assert registry.champion_version(reg) == v2
    with pytest.raises(LookupError):
        registry.promote("99", reg)
    assert not (tmp_path / "mlruns").exists(), "MLflow wrote ./mlruns into the working directory"


def test_fetch_model_and_pyfunc_predict(reg: Settings, adapter_dir: Path, tmp_path: Path):
    import mlflow
    import pandas as pd

    v = log(reg, adapter_dir, report(0.3, 0.4))
    registry.promote(v, reg)
    path, base, name = registry.fetch_model("champion", reg)
    assert (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()
    assert (path / "tokenizer_config.json").is_file()
    assert base == reg.model.base and name == f"models:/{reg.registered_model}/{v}"
    assert registry.fetch_model(f"models:/{reg.registered_model}/{v}", reg)[0] == path  # cached
    assert registry.fetch_model(f"models:/{reg.registered_model}@challenger", reg)[2] == name
    with pytest.raises(LookupError):
        registry.fetch_model(f"models:/{reg.registered_model}@nobody", reg)

    model = mlflow.pyfunc.load_model(f"models:/{reg.registered_model}@champion")
    t = make_transcript(n=5, chapters=(0, 3))
    out = model.predict(pd.DataFrame({"transcript": [t.model_dump_json()]}))
    assert list(out.columns) == ["id", "chapters", "model", "health"]
    assert out.loc[0, "id"] == t.id and out.loc[0, "health"] in ("clean", "repaired", "unusable")
    chapters = json.loads(out.loc[0, "chapters"])
    assert isinstance(chapters, list) and all({"title", "start_segment"} <= set(c) for c in chapters)
    # the unwrapped model also takes plain transcript dicts
    raw = model.unwrap_python_model().predict(None, [t.model_dump()])
    assert raw.loc[0, "id"] == t.id
    assert not (tmp_path / "mlruns").exists()


def test_logs_into_the_training_run_with_plots(reg: Settings, adapter_dir: Path, tmp_path: Path):
    import mlflow
    from mlflow import MlflowClient

    with mlflow.start_run(run_name="train") as run:  # what the pipeline's train stage does
        mlflow.log_params({"base_model": reg.model.base, "train.lora_r": 4})
    plot, notes = tmp_path / "timeline.png", tmp_path / "report.md"
    plot.write_bytes(b"\x89PNG fake")
    notes.write_text("# report")
    cand = registry.log_candidate(adapter_dir, reg.model.base, report(0.3, 0.4),
                                  params={"base_model": "ignored: already logged", "extra": 1},
                                  tags={"train_config": "abc"}, plots=[plot, notes], settings=reg,
                                  run_id=run.info.run_id)
    assert cand.run_id == run.info.run_id and cand.uri == f"models:/{reg.registered_model}/{cand.version}"
    client = MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert data.params["base_model"] == reg.model.base and data.params["extra"] == "1"
    assert set(registry.run_metrics(report(0.3, 0.4))) <= set(data.metrics)
    assert {"headline", "headline_lo", "f1/short", "f1_lo/short", "pk/talks", "unusable/pooled"} <= set(data.metrics)
    assert data.tags["train_config"] == "abc" and data.tags["eval_fingerprint"] == FP
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval")} == {"eval/report.json", "eval/report.md"}
    assert "timeline.png" in {a.path for a in client.list_artifacts(run.info.run_id)}  # Compare shows root files
    assert client.get_model_version(reg.registered_model, cand.version).tags["train_config"] == "abc"


def test_versions_registered_with_metric_tags_still_read(reg: Settings, adapter_dir: Path):
    """Before run metrics, each version kept `metric.eval_*` tags and no report file on some stores."""
    from mlflow import MlflowClient

    v = log(reg, adapter_dir, None)
    old = {"metric.eval_headline": "0.41", "metric.eval_short_f1": "0.5", "metric.eval_pk": "0.3",
           "metric.eval_pk_lo": "0.25", "metric.eval_pk_hi": "0.35", "eval_fingerprint": "old-fp"}
    for k, value in old.items():
        MlflowClient().set_model_version_tag(reg.registered_model, v, k, value)
    registry.promote(v, reg)
    row = registry.list_versions(reg)[0]
    assert row["metrics"] == {"headline": 0.41, "short_f1": 0.5, "pk": 0.3, "pk_lo": 0.25, "pk_hi": 0.35}
    rep = registry.champion_report(reg)
    assert rep.data_fingerprint == "old-fp" and rep.aggregate["pk"] == {"mean": 0.3, "lo": 0.25, "hi": 0.35}


def test_adapter_with_pickled_weights_is_refused(reg: Settings, adapter_dir: Path, tmp_path: Path):
    bad = tmp_path / "bad"
    shutil.copytree(adapter_dir, bad)
    (bad / "adapter_model.safetensors").unlink()
    (bad / "adapter_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match="safetensors"):
        log(reg, bad, None)


# --- a real tracking server ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_through_a_real_mlflow_server(tmp_path: Path, tiny_dir: Path, adapter_dir: Path, blank_db: Path,
                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(blank_db, tmp_path / "db.sqlite")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'db.sqlite'}",
           "--artifacts-destination", str(tmp_path / "art"), "--serve-artifacts"]
    log_file = (tmp_path / "server.log").open("w")
    # its own process group: `mlflow server` runs uvicorn as a child, and both must go at the end
    server = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp_path,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        s = Settings(state_dir=tmp_path / "client", mlflow_tracking_uri=url,
                     model=ModelSettings(base=str(tiny_dir), context_tokens=512, max_new_tokens=16)).prepare()
        registry.configure(s)
        with pytest.raises(LookupError, match="no champion yet"):
            registry.fetch_model("champion", s)
        v = log(s, adapter_dir, report(0.3, 0.4))
        with pytest.raises(LookupError):
            registry.promote("99", s)
        registry.decide_and_promote(v, Verdict(True, ["test"]), s)
        assert registry.champion_version(s) == v
        assert registry.champion_report(s).metric("pk") == pytest.approx(0.4)
        path, base, _ = registry.fetch_model("champion", s)
        assert (path / "adapter_model.safetensors").is_file() and base == str(tiny_dir)
        assert any((tmp_path / "art").rglob("adapter_model.safetensors")), "artifacts bypassed the server"
        assert not (tmp_path / "mlruns").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log_file.close()
