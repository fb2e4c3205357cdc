"""Curation and evaluation fanned out over Dask give exactly what one process gives.

The same ingested file (real transcripts, bad rows, exact and near duplicates and an eval look-alike
placed in other shards than their originals, a corpus from an earlier night) is curated once by
`pipeline.curate_stage` in this process and once by the flow's fan-out on a local Dask cluster of two
worker processes (and on an existing cluster named by `scale.dask_address`): the curated file, the
quarantine, the counts and the dataset fingerprint must match byte for byte. Evaluation is checked the
same way with a real baseline as the challenger.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import sys
from pathlib import Path

import pytest
from factories import small_project
from prefect import flow
from servers import free_port, server_process

from chaptering.config import PROJECT_ROOT, DataSettings, ScaleSettings, Settings
from chaptering.curate import Candidate, screen
from chaptering.io import read_transcripts, write_jsonl
from chaptering.schema import Segment, Transcript

pytest.importorskip("prefect_dask")


def _light_edit(t: Transcript, tid: str, seed: int) -> Transcript:
    """A near duplicate: a couple of words changed in two segments, the rest as it was."""
    rng = random.Random(seed)
    segs = list(t.segments)
    for i in rng.sample(range(len(segs)), 2):
        words = segs[i].text.split()
        words[rng.randrange(len(words))] = "zebra"
        segs[i] = segs[i].model_copy(update={"text": " ".join(words)})
    return t.model_copy(update={"id": tid, "segments": segs})


def _inputs(tmp: Path) -> tuple[Path, Path]:
    """inputs/videos.jsonl (what ingest reads) and an earlier night's corpus."""
    videos = read_transcripts(PROJECT_ROOT / "data" / "train" / "vidchapters-short.jsonl")
    lectures = read_transcripts(PROJECT_ROOT / "data" / "train" / "lectures.jsonl")[:4]
    heldout = [t for t in read_transcripts(PROJECT_ROOT / "data" / "eval" / "heldout.jsonl")
               if t.source.startswith("vidchapters")]  # small_project's held-out set: the first three
    base = videos[:36]
    passes = [t for t in base if isinstance(screen(t, DataSettings(), None), Candidate)]
    head = passes[:6]  # accepted originals in the first shard, their copies in the last
    rows: list[Transcript] = list(base)
    rows.append(Transcript(id="artefacts-only", segments=[Segment(text="[Music]"), Segment(text="(applause)")]))
    rows.append(Transcript(id="too-short", segments=[Segment(text="Hello and welcome to the show.")]))
    rows.append(Transcript(id="german", language="de", segments=[Segment(
        text="Heute sprechen wir über das Wetter und die Landwirtschaft in Bayern, und warum der Regen im "
             "Sommer so wichtig für die Bauern ist. Danach erklären wir, wie man einen Garten anlegt, welche "
             "Pflanzen im Schatten wachsen und wann man sie gießen sollte, damit sie gesund bleiben.")] * 3))
    rows += [_light_edit(t, f"{t.id}-reupload", i) for i, t in enumerate(head[:4])]  # near dups across shards
    rows.append(head[4].model_copy(update={"id": f"{head[4].id}-copy", "segments": [
        s.model_copy(update={"text": s.text.upper()}) for s in head[4].segments]}))  # exact dup, reformatted
    rows.append(head[5].model_copy(update={"segments": base[20].segments}))  # a repeated id
    rows.append(_light_edit(lectures[0], "lecture-again", 9))  # near dup of the corpus
    rows.append(heldout[0].model_copy(update={"id": "leaked-eval"}))  # eval contamination
    inputs = tmp / "inputs"
    write_jsonl(inputs / "videos.jsonl", rows)
    with (inputs / "videos.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"id": "broken", "segments": [\n')  # quarantined at ingest
    corpus = tmp / "corpus.jsonl"
    write_jsonl(corpus, lectures)
    return inputs, corpus


def _project(tmp: Path, tiny_dir: Path) -> Settings:
    tmp.mkdir(parents=True)
    s = small_project(tmp, tiny_dir)
    return s.model_copy(update={"gate": s.gate.model_copy(update={"compare_base": False})})


def _settings(tmp: Path, tiny_dir: Path, inputs: Path, corpus: Path, **scale) -> Settings:
    s = _project(tmp, tiny_dir)
    s = s.model_copy(update={"data": s.data.model_copy(update={"inputs": [inputs]}),
                             "scale": ScaleSettings(min_curate_shard=1, min_eval_shard=1, shards=3, **scale)})
    (s.state_dir / "corpus").mkdir(parents=True, exist_ok=True)
    shutil.copy(corpus, s.state_dir / "corpus" / "curated.jsonl")
    return s


def _curate_both(tmp_path: Path, tiny_dir: Path, **scale):
    from chaptering import pipeline, shards
    from flows import nightly

    inputs, corpus = _inputs(tmp_path)
    one = _settings(tmp_path / "one", tiny_dir, inputs, corpus, **scale)
    run_one = pipeline.new_run_dir(one)
    ingested = pipeline.ingest_stage(one, run_one)
    assert ingested["quarantined"] == 1
    many = _settings(tmp_path / "many", tiny_dir, inputs, corpus, **scale)
    run_many = pipeline.new_run_dir(many)
    for name in ("ingested.jsonl", "quarantine.jsonl"):
        shutil.copy(run_one / name, run_many / name)

    plan = shards.plan_curation(many, run_many)
    assert [s.kind for s in plan] == ["known"] * 3 + ["new"] * 3  # the corpus first, in input order
    single = pipeline.curate_stage(one, run_one)
    with _patient_api():
        fanned = flow(name="night")(nightly.curate_stage)(many, run_many)  # inside a flow, as in nightly_retrain
    return (one, run_one, single), (many, run_many, fanned), plan


def _patient_api():
    """A busy 2-core machine can take longer than Prefect's default 20 s to start the ephemeral API (the
    test process imported Prefect before `Settings.prepare` could raise it through the environment)."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    return temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 300})


def _quarantine(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "quarantine.jsonl").read_text().splitlines()]


def test_curation_on_a_local_dask_cluster_matches_one_process(tmp_path: Path, tiny_dir: Path) -> None:
    from chaptering import pipeline

    (one, run_one, single), (many, run_many, fanned), plan = _curate_both(tmp_path, tiny_dir, workers=2)
    assert fanned == single
    assert (run_many / "curated.jsonl").read_bytes() == (run_one / "curated.jsonl").read_bytes()
    assert (run_many / "quarantine.jsonl").read_bytes() == (run_one / "quarantine.jsonl").read_bytes()
    assert not (run_many / "shards").exists() or not any((run_many / "shards").iterdir())

    reasons = {r["location"].split(", id ")[-1]: r["reason"] for r in _quarantine(run_many)}
    first_new = next(s for s in plan if s.kind == "new")
    first_ids = {t.id for t in itertools.islice(read_transcripts(first_new.path), 12)}
    for tid, reason in reasons.items():
        if tid.endswith("-reupload"):  # its original is in the first shard, the copy in the last
            assert reason.startswith("near-duplicate of") and reason.split("'")[1] in first_ids
    assert sum(tid.endswith("-reupload") for tid in reasons) == 4
    assert reasons["lecture-again"].startswith("near-duplicate of")  # of the corpus (a known shard)
    assert reasons["leaked-eval"].startswith("eval contamination")
    assert any(r.startswith("exact duplicate of") for r in reasons.values())
    assert any(r.startswith("duplicate id") for r in reasons.values())
    assert {"artefacts-only", "too-short", "german"} <= set(reasons)
    assert single["accepted"] >= 30

    a = pipeline.dataset_stage(one, run_one, standalone=True)
    b = pipeline.dataset_stage(many, run_many, standalone=True)
    assert a.fingerprint == b.fingerprint and a.fingerprints == b.fingerprints


def test_curation_on_an_existing_cluster_matches_and_runs_there(tmp_path: Path, tiny_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A Prefect server and a Dask cluster that exist before the flow, as on separate machines: the
    workers know the server from PREFECT_API_URL, the flow knows the cluster from `scale.dask_address`."""
    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with server_process([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                         "--port", str(port)], f"{api}/health", tmp_path / "server.log", env=env,
                        name="prefect server"):
        monkeypatch.setenv("PREFECT_API_URL", api)  # what the worker processes inherit
        with temporary_settings({PREFECT_API_URL: api}), \
                LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            (_, run_one, single), (_, run_many, fanned), _ = _curate_both(tmp_path, tiny_dir,
                                                                           dask_address=cluster.scheduler_address)
            log = client.run_on_scheduler(lambda dask_scheduler: [str(t[0]) for t in dask_scheduler.transition_log])
    assert len({key for key in log if "curate_shard" in key or "curate-shard" in key}) >= 3, \
        f"the shards ran on the cluster named in settings; its scheduler saw {sorted(set(log))[:10]}"
    assert fanned == single
    assert (run_many / "curated.jsonl").read_bytes() == (run_one / "curated.jsonl").read_bytes()
    assert (run_many / "quarantine.jsonl").read_bytes() == (run_one / "quarantine.jsonl").read_bytes()


def test_evaluation_on_a_local_dask_cluster_matches_one_process(tmp_path: Path, tiny_dir: Path) -> None:
    from chaptering import pipeline
    from chaptering.run_types import TrainOutcome
    from flows import nightly

    reports = []
    for name in ("one", "many"):
        s = _project(tmp_path / name, tiny_dir)
        s = s.model_copy(update={"scale": ScaleSettings(min_eval_shard=1, shards=3, workers=2)})
        run_dir = s.state_dir / "runs" / "night"
        outcome = TrainOutcome(True, "a baseline stands in for the challenger", Path("baseline:equal"))
        stage = pipeline.evaluate_stage if name == "one" else flow(name="night")(nightly.evaluate_stage)
        with _patient_api():
            evals = stage(s, outcome, run_dir)
        reports.append(evals)
    one, many = reports
    strip = [{k: v for k, v in r.items() if k != "latency_s"} for r in one.challenger.rows]
    assert [{k: v for k, v in r.items() if k != "latency_s"} for r in many.challenger.rows] == strip
    assert many.challenger.aggregate == one.challenger.aggregate
    assert many.challenger.domains == one.challenger.domains and many.challenger.headline == one.challenger.headline
    assert many.challenger.data_fingerprint == one.challenger.data_fingerprint
    assert many.challenger.model == one.challenger.model == "challenger:night"
    assert [r.model for r in many.references] == [r.model for r in one.references]
