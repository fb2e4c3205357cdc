"""The service: predict (JSON and upload), feedback, limits, the model endpoint, hot reload, fuzzing.

The tiny random Llama (real tokenizer) answers; registry tests use a real MLflow SQLite store in a
per-test state folder. Fake chapterers only where a test needs control over timing.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from factories import make_transcript
from fastapi.testclient import TestClient

from chaptering import registry
from chaptering.config import ModelSettings, ServeSettings, Settings
from chaptering.feedback import FeedbackStore
from chaptering.ingest import Watermarks, ingest_feedback
from chaptering.schema import PredictedChapter, Prediction, Transcript
from chaptering.serve import _GRACE_S, create_app

DEMO_VTT = Path(__file__).resolve().parent.parent / "data" / "demo" / "seed-home-tour.vtt"


def make_settings(root: Path, tiny_dir: Path, **serve: Any) -> Settings:
    return Settings(
        state_dir=root / "state",
        model=ModelSettings(base=str(tiny_dir), context_tokens=512, max_new_tokens=16),
        serve=ServeSettings(**{"poll_seconds": 0, **serve}),
    ).prepare()


def body(t: Transcript | None = None) -> dict[str, Any]:
    return (t or make_transcript(n=12, chapters=(0, 6))).model_dump(mode="json")


def edit_for(resp: dict[str, Any], corrected: list[int], **kw: Any) -> dict[str, Any]:
    return {
        "transcript_id": resp["transcript_id"],
        "model_version": resp["model_version"],
        "prediction_id": resp["prediction_id"],
        "predicted": [{"title": c["title"], "start_segment": c["start_segment"]} for c in resp["chapters"]],
        "corrected": [{"title": f"Part {i}", "start_segment": s} for i, s in enumerate(corrected)],
        "user_id": "u1",
        **kw,
    }


@pytest.fixture(scope="module")
def base_settings(tiny_dir: Path, tmp_path_factory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("serve-base"), tiny_dir)


@pytest.fixture(scope="module")
def client(base_settings: Settings):
    """The tiny model pinned as `base` (no registry): most endpoint tests share it."""
    with TestClient(create_app(base_settings, model_spec="base")) as c:
        yield c


# ------------------------------------------------------------------------------------------- predict


def test_predict_json(client: TestClient) -> None:
    r = client.post("/v1/chapters", json=body())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["transcript_id"] == "t1" and out["model_version"] == "base" and len(out["prediction_id"]) == 32
    assert out["chapters"][0]["start_segment"] == 0 and out["chapters"][0]["start"] == 0.0
    assert out["youtube"].startswith("00:00 ")
    assert out["webvtt"].startswith("WEBVTT") and "chapter-1" in out["webvtt"]
    assert out["health"] in ("clean", "repaired", "unusable")


def test_predict_untimed_transcript_has_no_tracks(client: TestClient) -> None:
    r = client.post("/v1/chapters", json=body(make_transcript(n=8, chapters=(0,), timed=False)))
    assert r.status_code == 200, r.text
    out = r.json()
    # One chapter needs no times, so the tracks exist; a multi-chapter answer without times cannot.
    if len(out["chapters"]) > 1:
        assert out["youtube"] is None and out["warnings"]
    else:
        assert out["youtube"].startswith("00:00")


def test_predict_vtt_upload(client: TestClient) -> None:
    r = client.post("/v1/chapters", files={"file": (DEMO_VTT.name, DEMO_VTT.read_bytes(), "text/vtt")})
    assert r.status_code == 200, r.text
    assert r.json()["transcript_id"] == "seed-home-tour"
    r = client.post("/v1/chapters", files={"file": ("x.srt", b"1\n00:00:00,000 --> 00:00:02,000\nHello there\n")},
                    data={"id": "my-video"})
    assert r.status_code == 200, r.text
    assert r.json()["transcript_id"] == "my-video"


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"file": ("notes.txt", b"hello")}, "unsupported file type"),
        ({"file": ("bad.vtt", b"WEBVTT\n\n00:00:05.000 --> 00:00:01.000\nbackwards\n")}, "bad.vtt"),
        ({"other": ("a.vtt", b"WEBVTT\n")}, "field named 'file'"),
    ],
)
def test_bad_uploads_are_422(client: TestClient, files: dict, needle: str) -> None:
    r = client.post("/v1/chapters", files=files)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json", "json"),
        (b'{"id": "x", "segments": []}', "segments"),
        (b'{"id": "x", "segments": [{"text": "a", "start": NaN}]}', "segments.0.start"),
        (b'{"id": "x", "segments": [{"text": "a", "start": 1e999}]}', "segments.0.start"),
        (b'{"id": "x", "segments": [{"text": "a", "start": 5, "end": 1}]}', "ends"),
        (b'{"id": "x", "segments": [{"text": "  "}]}', "no text"),
        (b'{"id": "", "segments": [{"text": "a"}]}', "id"),
    ],
)
def test_bad_transcripts_are_422(client: TestClient, payload: bytes, needle: str) -> None:
    r = client.post("/v1/chapters", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert needle.lower() in r.json()["detail"].lower()


def test_unsupported_content_type_is_415(client: TestClient) -> None:
    r = client.post("/v1/chapters", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart" in r.json()["detail"]


def test_reference_chapters_in_the_request_are_ignored(client: TestClient) -> None:
    payload = body()
    payload["chapters"] = [{"title": "broken", "start_segment": 99}]
    assert client.post("/v1/chapters", json=payload).status_code == 200


# ------------------------------------------------------------------------------------------ feedback


def test_feedback_is_linked_for_the_nightly_ingest(client: TestClient, base_settings: Settings) -> None:
    served = client.post("/v1/chapters", json=body(make_transcript(n=12, chapters=(0, 6), tid="loop-1"))).json()
    r = client.post("/v1/feedback", json=edit_for(served, [0, 4, 8]))
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "edit" and r.json()["prediction_id"] == served["prediction_id"]
    rating = {k: v for k, v in edit_for(served, [0]).items() if k not in ("corrected", "prediction_id")}
    r = client.post("/v1/feedback", json={**rating, "rating": "accept"})  # no id: linked by transcript+version
    assert r.status_code == 201, r.text

    store = FeedbackStore(base_settings.feedback_db)
    try:
        rejected: list = []
        pairs = list(ingest_feedback(store, Watermarks(base_settings.state_dir / "wm.json"), rejected))
    finally:
        store.close()
    assert not rejected
    mine = [(e, t) for e, t in pairs if e.transcript_id == "loop-1"]
    assert [e.kind for e, _ in mine] == ["edit", "rating"]
    assert all(t.id == "loop-1" and len(t.segments) == 12 for _, t in mine)
    assert {e.prediction_id for e, _ in mine} == {served["prediction_id"]}


def test_feedback_refusals_are_422(client: TestClient) -> None:
    served = client.post("/v1/chapters", json=body()).json()
    cases = {
        "unknown prediction": {**edit_for(served, [0, 3]), "prediction_id": "f" * 32},
        "not strictly increasing": edit_for(served, [0, 5, 5]),
        "start at segment 0": edit_for(served, [2, 5]),
        "out of range": edit_for(served, [0, 99]),
        "either corrected chapters or a rating": {**edit_for(served, [0, 3]), "rating": "accept"},
        "rating": {**edit_for(served, [0]), "corrected": None, "rating": "meh"},
        "is for transcript": {**edit_for(served, [0, 3]), "transcript_id": "someone-else"},
    }
    for needle, payload in cases.items():
        r = client.post("/v1/feedback", json=payload)
        assert r.status_code == 422, (needle, r.text)
        assert needle in r.json()["detail"] or needle in r.text, (needle, r.text)


def test_feedback_token(tiny_dir: Path, tmp_path: Path) -> None:
    s = make_settings(tmp_path, tiny_dir, token="s3cret")
    with TestClient(create_app(s, model_spec="base")) as c:
        served = c.post("/v1/chapters", json=body()).json()  # predicting needs no token
        event = edit_for(served, [0, 4])
        assert c.post("/v1/feedback", json=event).status_code == 401
        r = c.post("/v1/feedback", json=event, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        # Authentication comes before validation: no schema hints for strangers.
        assert c.post("/v1/feedback", json={"junk": 1}).status_code == 401
        r = c.post("/v1/feedback", json=event, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 201, r.text


# -------------------------------------------------------------------------------------------- limits


def test_size_and_length_limits(tiny_dir: Path, tmp_path: Path) -> None:
    s = make_settings(tmp_path, tiny_dir, max_request_bytes=4000, max_segments=20)
    with TestClient(create_app(s, model_spec="base")) as c:
        big = body(make_transcript(n=200))
        r = c.post("/v1/chapters", json=big)
        assert r.status_code == 413 and "serve.max_request_bytes" in r.json()["detail"]

        def chunks():  # streamed, no Content-Length: counted as it arrives
            yield b'{"id": "x", "segments": ['
            for _ in range(400):
                yield b'{"text": "padding padding"},'
            yield b'{"text": "end"}]}'

        assert c.post("/v1/chapters", content=chunks(),
                      headers={"content-type": "application/json"}).status_code == 413
        r = c.post("/v1/chapters", json=body(make_transcript(n=25, chapters=(0,))))
        assert r.status_code == 413 and "serve.max_segments" in r.json()["detail"]
        long_line = {"id": "x", "segments": [{"text": "x" * 20_001}]}
        assert c.post("/v1/chapters", json=long_line).status_code in (413, 422)
        assert c.post("/v1/chapters", json=body()).status_code == 200


class SlowChapterer:
    """Sleeps, and records how many predictions ran at once."""

    def __init__(self, name: str, delay: float) -> None:
        self.name, self.delay = name, delay
        self.active = self.peak = 0
        self._lock = threading.Lock()

    def predict(self, t: Transcript) -> Prediction:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay)
        finally:
            with self._lock:
                self.active -= 1
        return Prediction(id=t.id, model=self.name, meta={"health": "clean"},
                          chapters=[PredictedChapter(title="All", start_segment=0, start=t.segments[0].start)])


def _parallel(c: TestClient, n: int, path: str = "/v1/chapters") -> list[Any]:
    results: list[Any] = [None] * n

    def go(i: int) -> None:
        results[i] = c.post(path, json=body())

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


def test_concurrency_is_bounded_and_requests_queue(tiny_dir: Path, tmp_path: Path) -> None:
    slow = SlowChapterer("slow", 0.3)
    s = make_settings(tmp_path, tiny_dir, max_concurrency=2, generation_timeout_s=30)
    with TestClient(create_app(s, chapterer_loader=lambda spec, st: slow, model_spec="fake")) as c:
        results = _parallel(c, 6)
    assert [r.status_code for r in results] == [200] * 6
    assert slow.peak == 2


def test_timeouts_queue_503_and_generation_504(tiny_dir: Path, tmp_path: Path) -> None:
    slow = SlowChapterer("slow", 1.5)
    s = make_settings(tmp_path, tiny_dir, max_concurrency=1, generation_timeout_s=0.5)
    with TestClient(create_app(s, chapterer_loader=lambda spec, st: slow, model_spec="fake")) as c:
        codes = sorted(r.status_code for r in _parallel(c, 2))
    assert codes == [503, 504]


@pytest.mark.parametrize("decoding", ["free", "tagged", "ranked"])
def test_real_generation_stops_at_the_deadline(tiny_dir: Path, tmp_path: Path, decoding: str) -> None:
    """Free decoding: the tiny random model never emits EOS, so 2,000 new tokens would take long.
    Tagged / ranked: 3,000 lines, many windows and forward passes. Each way, the deadline cuts it."""
    s = make_settings(tmp_path, tiny_dir, generation_timeout_s=0.5)
    s = s.model_copy(update={"model": ModelSettings(base=str(tiny_dir), context_tokens=4096, max_new_tokens=2000,
                                                    decoding=decoding)})
    long = make_transcript(n=3000, chapters=(0, 1500))
    with TestClient(create_app(s, model_spec="base")) as c:
        t0 = time.perf_counter()
        r = c.post("/v1/chapters", json=body(long))
        elapsed = time.perf_counter() - t0
    assert r.status_code == 504 and "serve.generation_timeout_s" in r.json()["detail"]
    assert elapsed < 0.5 + _GRACE_S  # the worker stopped itself; the grace-period fallback did not fire


def test_pinned_folder_with_pickled_weights_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    app = create_app(make_settings(tmp_path, tiny_dir), model_spec=str(folder))
    with pytest.raises(ValueError, match="pickled"), TestClient(app):
        pass


# ------------------------------------------------------------------------------------ model, health


def test_model_and_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "model_version": "base"}
    m = client.get("/v1/model").json()
    assert m["version"] == "base" and m["source"] == "fixed" and m["model"].startswith("base:")


def test_in_flight_request_finishes_on_the_old_model(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    champion = {"v": "1"}
    monkeypatch.setattr(registry, "champion_version", lambda settings: champion["v"])
    monkeypatch.setattr(registry, "list_versions", lambda settings: [])
    models = {f"models:/chaptering/{v}": SlowChapterer(f"m{v}", 1.0) for v in ("1", "2")}
    s = make_settings(tmp_path, tiny_dir)
    app = create_app(s, chapterer_loader=lambda spec, st: models[spec])
    with TestClient(app) as c:
        results: list[Any] = []
        th = threading.Thread(target=lambda: results.append(c.post("/v1/chapters", json=body())))
        th.start()
        time.sleep(0.3)  # the request is now inside the old model
        champion["v"] = "2"
        assert app.state.reload_now() is True
        assert c.get("/v1/model").json()["version"] == "2"
        th.join()
        assert results[0].status_code == 200 and results[0].json()["model_version"] == "1"
        assert c.post("/v1/chapters", json=body()).json()["model_version"] == "2"


# -------------------------------------------------------------------------------- registry hot reload


@pytest.fixture
def reg(tmp_path: Path, tiny_dir: Path, monkeypatch) -> Settings:
    monkeypatch.chdir(tmp_path)  # a stray ./mlruns would land here
    s = make_settings(tmp_path, tiny_dir, poll_seconds=0.2)
    registry.configure(s)
    return s


def _register(s: Settings, adapter: Path) -> str:
    return registry.log_candidate(adapter, s.model.base, None, params={"lora_r": 4}, tags={}, plots=[],
                                  settings=s).version


def _wait_for_version(c: TestClient, version: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if c.get("/v1/model").json()["version"] == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"service did not switch to version {version}: {c.get('/v1/model').json()}")


def test_with_no_champion_the_service_answers_from_the_configured_fallback(tmp_path: Path, tiny_dir: Path,
                                                                          monkeypatch) -> None:
    """serve.fallback names what a fresh install serves until the first promotion (a baseline that scores
    better than the zero-shot base, say); a name that is neither base nor baseline:NAME is refused."""
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, tiny_dir, fallback="baseline:equal")
    registry.configure(s)
    with TestClient(create_app(s)) as c:
        m = c.get("/v1/model").json()
        assert (m["source"], m["version"], m["model"]) == ("base", "baseline:equal", "baseline:equal")
        r = c.post("/v1/chapters", json=make_transcript(n=12, chapters=(0, 6)).model_dump(mode="json"))
        assert r.status_code == 200 and r.json()["model_version"] == "baseline:equal"
    with pytest.raises(ValueError, match="serve.fallback"):
        ServeSettings(fallback="champion")


def test_hot_reload_follows_the_champion_alias(reg: Settings, adapter_dir: Path) -> None:
    with TestClient(create_app(reg)) as c:  # no champion yet: the base model
        assert c.get("/v1/model").json()["source"] == "base"
        v1 = _register(reg, adapter_dir)
        registry.promote(v1, reg)
        _wait_for_version(c, v1)  # the poller noticed
        m = c.get("/v1/model").json()
        assert m["source"] == "registry" and m["registry_champion"] == v1 and m["details"]["decision"] == "promoted"
        assert c.post("/v1/chapters", json=body()).json()["model_version"] == v1

        v2 = _register(reg, adapter_dir)
        registry.promote(v2, reg)
        c.app.state.reload_now()  # or wait for the poller: both end the same way
        assert c.get("/v1/model").json()["version"] == v2
        served = c.post("/v1/chapters", json=body()).json()
        assert served["model_version"] == v2 and served["model"] == f"models:/{reg.registered_model}/{v2}"
        assert c.post("/v1/feedback", json=edit_for(served, [0, 6])).status_code == 201

        assert registry.rollback(reg) == v1
        _wait_for_version(c, v1)


def test_starts_on_an_existing_champion(reg: Settings, adapter_dir: Path) -> None:
    v1 = _register(reg, adapter_dir)
    registry.promote(v1, reg)
    shutil.rmtree(reg.cache_dir / "registry", ignore_errors=True)  # a fresh machine downloads it
    with TestClient(create_app(reg)) as c:
        assert c.get("/healthz").json() == {"status": "ok", "model_version": v1}
        assert c.post("/v1/chapters", json=body()).json()["model_version"] == v1


# ---------------------------------------------------------------------------------------- fuzzing


def test_openapi_documents_both_request_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/chapters"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert "TranscriptIn" in spec["components"]["schemas"] and "SegmentIn" in spec["components"]["schemas"]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_no_server_errors(tiny_dir: Path, tmp_path: Path, mode: str) -> None:
    """Schemathesis cases from the OpenAPI schema, fitting it or not, never get a 5xx (15 per operation).

    Driven through plain Hypothesis: schemathesis' pytest loader does not run under pytest 9."""
    hypothesis = pytest.importorskip("hypothesis")
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    s = make_settings(tmp_path, tiny_dir, max_segments=200)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(s, model_spec="base"))
    seen: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode == "negative" and operation.method.upper() == "GET":
            continue  # nothing to get wrong: no parameters, no body

        @hypothesis.given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        @hypothesis.settings(max_examples=15, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def run(case: Any) -> None:
            response = case.call_and_validate(checks=[not_a_server_error])
            seen.setdefault(f"{case.method} {case.path}", []).append(response.status_code)

        run()
    expected = {"POST /v1/chapters", "POST /v1/feedback"} | ({"GET /v1/model", "GET /healthz"} if mode == "positive" else set())
    assert expected == set(seen)
    assert all(code < 500 for codes in seen.values() for code in codes), seen


# ------------------------------------------------------------------------------- hostile input (issue 20)


def _feedback_raw(c: TestClient, raw: bytes | str, **headers: str) -> Any:
    return c.post("/v1/feedback", content=raw, headers={"content-type": "application/json", **headers})


def test_feedback_with_a_lone_surrogate_is_refused_like_chapters(client: TestClient) -> None:
    """Issue 20 #1: /v1/feedback stored `"x \\ud800"` (201) and the next nightly crashed on it."""
    served = client.post("/v1/chapters", json=body()).json()
    event = edit_for(served, [0, 4])
    event["corrected"][1]["title"] = "x \ud800"
    r = _feedback_raw(client, json.dumps(event))
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "corrected.1.title: text contains a lone surrogate U+D800 at position 2: not " \
                                 "valid Unicode text"
    t = body()
    t["segments"][0]["text"] = "x \ud800"
    r = client.post("/v1/chapters", content=json.dumps(t), headers={"content-type": "application/json"})
    assert r.status_code == 422 and "segments.0.text: text contains a lone surrogate" in r.json()["detail"]


def test_feedback_must_cite_a_served_prediction_and_is_bounded(tiny_dir: Path, tmp_path: Path) -> None:
    """Issue 20 #5: feedback citing nothing the service made was stored; 4 MB rows were accepted."""
    s = make_settings(tmp_path, tiny_dir, max_feedback_bytes=20_000)
    with TestClient(create_app(s, model_spec="baseline:equal")) as c:
        served = c.post("/v1/chapters", json=body()).json()
        orphan = {k: v for k, v in edit_for(served, [0, 4]).items() if k != "prediction_id"}
        r = c.post("/v1/feedback", json={**orphan, "transcript_id": "never-served"})
        assert r.status_code == 422 and "must cite a prediction" in r.json()["detail"]
        big = edit_for(served, [0, 4])
        big["corrected"][0]["title"] = "x" * 30_000
        r = c.post("/v1/feedback", json=big)
        assert r.status_code == 413 and "serve.max_feedback_bytes" in r.json()["detail"]
        big["corrected"][0]["title"] = "x" * 5_000  # under the byte limit, over the title bound
        assert c.post("/v1/feedback", json=big).status_code == 422
        assert c.post("/v1/chapters", json=body(make_transcript(n=400))).status_code == 200  # chapters: 5 MB
        store = FeedbackStore(s.feedback_db)
        try:
            assert store.count() == 0
        finally:
            store.close()


def test_stored_transcripts_are_scrubbed(tiny_dir: Path, tmp_path: Path) -> None:
    """Issue 20 #5: /v1/chapters stored every transcript in full, unscrubbed."""
    s = make_settings(tmp_path, tiny_dir)
    t = make_transcript(n=12, chapters=(0, 6))
    t.segments[2] = t.segments[2].model_copy(update={"text": "write to jane.doe@example.com today"})
    with TestClient(create_app(s, model_spec="baseline:equal")) as c:
        pid = c.post("/v1/chapters", json=body(t)).json()["prediction_id"]
    store = FeedbackStore(s.feedback_db)
    try:
        stored = store.get_prediction(pid)["transcript"]["segments"][2]["text"]
    finally:
        store.close()
    assert stored == "write to <EMAIL> today"


def test_retention_sweeper_purges_at_most_hourly(tmp_path: Path) -> None:
    from chaptering.serve import RetentionSweeper

    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    try:
        pid = store.record_prediction(make_transcript(), [], "1")
        sweeper = RetentionSweeper(store, days=0.0)
        assert sweeper.maybe_purge() == 1 and store.get_prediction(pid)["transcript"] is None
        store.record_prediction(make_transcript(), [], "1")
        assert sweeper.maybe_purge() == 0  # within the hour: no second sweep
        assert RetentionSweeper(store, days=None).maybe_purge() == 0  # None keeps transcripts
    finally:
        store.close()


def test_production_config_turns_the_token_on(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Issue 20 #5: feedback needed no token by default; configs/production.yaml requires one."""
    from chaptering.config import PROJECT_ROOT

    monkeypatch.setenv("CHAPTERING_CONFIG_FILE", str(PROJECT_ROOT / "configs" / "production.yaml"))
    monkeypatch.delenv("CHAPTERING_SERVE__TOKEN", raising=False)
    prod = Settings(state_dir=tmp_path / "state")
    assert prod.serve.require_token and prod.serve.token is None
    with pytest.raises(ValueError, match="CHAPTERING_SERVE__TOKEN"):
        create_app(prod, model_spec="baseline:equal")
    monkeypatch.setenv("CHAPTERING_SERVE__TOKEN", "s3cret")
    with TestClient(create_app(Settings(state_dir=tmp_path / "state"), model_spec="baseline:equal")) as c:
        served = c.post("/v1/chapters", json=body()).json()
        assert c.post("/v1/feedback", json=edit_for(served, [0, 4])).status_code == 401
        ok = c.post("/v1/feedback", json=edit_for(served, [0, 4]), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 201, ok.text


def test_idempotency_key_header_and_field(client: TestClient, base_settings: Settings) -> None:
    """Issue 20 #6: a retry after a lost acknowledgement inserted the event twice."""
    served = client.post("/v1/chapters", json=body(make_transcript(n=12, chapters=(0, 6), tid="idem"))).json()
    event = edit_for(served, [0, 4])
    first = client.post("/v1/feedback", json=event, headers={"Idempotency-Key": "retry-me"})
    again = client.post("/v1/feedback", json=event, headers={"Idempotency-Key": "retry-me"})
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == {**first.json(), "replayed": True} and again.headers["idempotent-replayed"] == "true"
    by_field = client.post("/v1/feedback", json={**event, "idempotency_key": "retry-me"})
    assert by_field.json()["id"] == first.json()["id"]
    other = client.post("/v1/feedback", json={**edit_for(served, [0, 8])}, headers={"Idempotency-Key": "retry-me"})
    assert other.status_code == 409 and "different event" in other.json()["detail"]
    mixed = client.post("/v1/feedback", json={**event, "idempotency_key": "a"}, headers={"Idempotency-Key": "b"})
    assert mixed.status_code == 422
    store = FeedbackStore(base_settings.feedback_db)
    try:
        rows = [raw for _, _, raw in store.events_after(0) if raw["transcript_id"] == "idem"]
    finally:
        store.close()
    assert len(rows) == 1 and rows[0]["idempotency_key"] == "retry-me"


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe{}", b'{"a": 1', b"[" * 10_000])
def test_invalid_json_is_the_same_422_on_both_endpoints(client: TestClient, raw: bytes) -> None:
    """Issue 20 #9: invalid JSON was 400 on one endpoint (non-UTF-8 on /v1/feedback), 422 on the other."""
    answers = [client.post(path, content=raw, headers={"content-type": "application/json"})
               for path in ("/v1/chapters", "/v1/feedback")]
    assert [r.status_code for r in answers] == [422, 422], [r.text for r in answers]
    assert all(r.json()["detail"].startswith("Invalid JSON") for r in answers)


def test_malformed_feedback_without_a_token_is_401(tiny_dir: Path, tmp_path: Path) -> None:
    """Issue 20 #9: a malformed body without a token got 422 (a schema hint) before the token check."""
    s = make_settings(tmp_path, tiny_dir, token="s3cret")
    with TestClient(create_app(s, model_spec="baseline:equal")) as c:
        for raw in (b"{not json", b"\xff", b'{"transcript_id": 5}'):
            assert _feedback_raw(c, raw).status_code == 401
        assert _feedback_raw(c, b"{not json", Authorization="Bearer s3cret").status_code == 422


def test_strict_types(client: TestClient) -> None:
    """Issue 20 #9: `"start": true` was read as 1.0; numbers in strings and 1.0 as an index are refused too."""
    for seg in ({"text": "a b", "start": True}, {"text": "a b", "start": "1.5"}, {"text": "a b", "end": False}):
        r = client.post("/v1/chapters", json={"id": "x", "segments": [seg]})
        assert r.status_code == 422 and "valid number" in r.json()["detail"], r.text
    assert client.post("/v1/chapters", json={"id": "x", "segments": [{"text": "a b", "start": 1}]}).status_code == 200
    served = client.post("/v1/chapters", json=body()).json()
    for bad in (True, 4.0, "4"):
        event = edit_for(served, [0, 4])
        event["corrected"][1]["start_segment"] = bad
        r = client.post("/v1/feedback", json=event)
        assert r.status_code == 422 and "corrected.1.start_segment" in r.json()["detail"], r.text


def test_no_local_paths_or_exception_text_in_answers(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Issue 20 #9: answers and /v1/model showed the local model path and raw exception text."""
    s = make_settings(tmp_path, tiny_dir)
    with TestClient(create_app(s, model_spec="base")) as c:
        served = c.post("/v1/chapters", json=body()).json()
        shown = c.get("/v1/model").json()
    assert str(tiny_dir) not in json.dumps(served) and str(tiny_dir) not in json.dumps(shown)
    assert served["model"] == shown["model"] == f"base:{tiny_dir.name}"

    def broken(spec: str, st: Settings) -> Any:
        raise OSError(f"cannot open {tmp_path}/secret/weights.safetensors")

    app = create_app(s, chapterer_loader=broken, model_spec="fake")
    c = TestClient(app)  # no lifespan: the first request tries to load
    r = c.post("/v1/chapters", json=body())
    assert r.status_code == 503 and str(tmp_path) not in r.text and "server log" in r.json()["detail"]
    assert str(tmp_path) not in (app.state.models.last_error or "")


def test_public_name() -> None:
    from chaptering.serve import public_name

    assert public_name("models:/chaptering/3") == "models:/chaptering/3"
    assert public_name("base:embedded") == "base:embedded"
    assert public_name("base:Qwen/Qwen2.5-0.5B-Instruct") == "base:Qwen/Qwen2.5-0.5B-Instruct"
    assert public_name("baseline:equal") == "baseline:equal"
    assert public_name("/srv/runs/x/adapter") == "local:adapter"
    assert public_name("base:/home/me/models/smol") == "base:smol"


def test_body_that_never_finishes_gets_408() -> None:
    """Issue 20 #4: half-sent requests were held open for as long as the client liked."""
    import asyncio

    from chaptering.serve import BodyLimit

    sent: list[dict] = []
    called = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    async def receive() -> dict:
        if not sent and not called and not hasattr(receive, "first"):
            receive.first = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": b'{"id": ', "more_body": True}
        await asyncio.sleep(3600)  # the rest never comes
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chapters", "headers": [(b"content-length", b"100")]}
    t0 = time.perf_counter()
    asyncio.run(BodyLimit(app, limit=1000, read_timeout_s=0.3)(scope, receive, send))
    assert time.perf_counter() - t0 < 2 and not called
    start = sent[0]
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert b"serve.request_read_timeout_s" in sent[1]["body"]


@pytest.mark.embedding
def test_the_default_fallback_is_embedding_valleys_and_keeps_no_embeddings_on_disk(tmp_path: Path, tiny_dir: Path,
                                                                                    monkeypatch) -> None:
    """A fresh install serves embedding valleys (the zero-shot base scores below them on every held-out
    short video measured), and the service caches no line embeddings of users' transcripts on disk."""
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, tiny_dir)
    assert s.serve.fallback == "baseline:embedding"
    registry.configure(s)
    with TestClient(create_app(s)) as c:
        assert c.get("/v1/model").json()["version"] == "baseline:embedding"
        r = c.post("/v1/chapters", json=make_transcript(n=40, chapters=(0, 20)).model_dump(mode="json"))
        assert r.status_code == 200 and r.json()["chapters"][0]["start_segment"] == 0
    assert not list(s.cache_dir.rglob("*.npy"))
    from chaptering.factory import load_chapterer

    assert load_chapterer("baseline:embedding", s, embedding_cache=False).cache_dir is None
    assert load_chapterer("baseline:embedding", s).cache_dir == s.cache_dir  # evaluation and training keep it
