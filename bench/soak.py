"""Soak test: a bounded mix of valid and hostile traffic against a real `chaptering serve` on loopback.

    python bench/soak.py [--duration 120] [--workers 4] [--model baseline:equal] [--max-requests 50000]

Starts `chaptering serve` on a free 127.0.0.1 port with a scratch state folder (its own feedback store,
a bearer token; `--launcher run_server` starts `chaptering.serve.run_server` instead, which adds the
header timeout and connection cap that `uvicorn.run` cannot; `chaptering serve` uses it too), then for `--duration` seconds (at most `--max-requests` requests) sends, from a few
threads:
- valid transcripts to /v1/chapters and valid feedback on their predictions, each feedback with an
  idempotency key, one in ten sent twice (a client retry);
- the hostile probes of issue 20: lone surrogates, invalid JSON and UTF-8, `"start": true`, floats as
  indices, 20,000-character segments, oversized and uncited feedback, missing tokens, reused keys,
  deep nesting, wrong content types, bodies over the limit;
- slow clients (bodies that never finish, headers that never finish), checked for being cut off.

It stops by itself, stops the server, and then reads the feedback store back. Reported (and written
to bench/results/soak.json): unexpected 5xx (a 503 "busy" or 504 deadline answer is the designed
overload behaviour and counted apart), answers other than the expected status, acknowledged feedback
events missing from the store (lost) or stored twice, p50/p95/p99 latency of the valid requests,
server RSS at the start, the end and its peak, and how the slow clients fared. Exit status 1 when
anything unexpected happened. Only loopback addresses are ever used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from measure import percentile, rss_mb

from chaptering.server_process import free_port, server_process

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only, by construction
TOKEN = "soak-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
JSON = {"content-type": "application/json"}
READ_TIMEOUT_S = 2.0  # serve.request_read_timeout_s for the run: slow bodies must be cut within it
MAX_REQUEST_BYTES = 500_000


# ----------------------------------------------------------------------------------------------- server


RUN_SERVER = """
import sys
from chaptering.config import apply_overrides, get_settings
from chaptering.serve import run_server
host, port, model, *overrides = sys.argv[1:]
run_server(apply_overrides(get_settings(), overrides).prepare(), host, int(port), model)
"""


def server_command(state: Path, port: int, model: str, extra: list[str],
                   launcher: str = "cli") -> tuple[list[str], dict[str, str]]:
    """`chaptering serve` (or `serve.run_server`) with a scratch state folder; CHAPTERING_* from the
    caller's environment is dropped so a real config file or store is never touched."""
    empty = state / "no-inputs"
    empty.mkdir(parents=True, exist_ok=True)
    overrides = [f"state_dir={state}", f"data.inputs=[{empty}]", f"serve.token={TOKEN}", "serve.poll_seconds=0",
                 f"serve.request_read_timeout_s={READ_TIMEOUT_S}", f"serve.max_request_bytes={MAX_REQUEST_BYTES}",
                 "serve.max_concurrency=2", "serve.generation_timeout_s=30", *extra]
    if launcher == "run_server":
        cmd = [sys.executable, "-c", RUN_SERVER, HOST, str(port), model, *overrides]
    else:
        cmd = [str(Path(sys.executable).parent / "chaptering"), "serve", "--host", HOST, "--port", str(port),
               "--model", model]
        for item in overrides:
            cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAPTERING_")}
    env["PREFECT_HOME"] = str(state / "prefect")
    return cmd, env


# ---------------------------------------------------------------------------------------------- traffic


def transcript(rng: random.Random, tid: str) -> dict[str, Any]:
    n = rng.randint(8, 120)
    words = ["budget", "design", "team", "launch", "review", "model", "data", "plan", "risk", "demo"]
    segments = [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(4, 16))),
                 "start": 3.0 * i, "end": 3.0 * i + 2.5} for i in range(n)]
    return {"id": tid, "segments": segments}


def feedback_for(served: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    predicted = [{"title": c["title"], "start_segment": c["start_segment"]} for c in served["chapters"]]
    event = {"transcript_id": served["transcript_id"], "model_version": served["model_version"],
             "prediction_id": served["prediction_id"], "predicted": predicted, "user_id": "soak"}
    if rng.random() < 0.5:
        return {**event, "rating": rng.choice(["accept", "reject"])}
    return {**event, "corrected": [{"title": "Opening", "start_segment": 0},
                                   {"title": "Later", "start_segment": 4}]}


def hostile_cases(served: dict[str, Any], rng: random.Random) -> list[tuple[str, str, bytes, dict[str, str], set[int]]]:
    """(name, path, body, headers, expected statuses): issue 20's probes."""
    event = feedback_for(served, rng)
    dumps = json.dumps

    def with_title(title: str) -> bytes:
        bad = json.loads(dumps(event))
        bad.setdefault("corrected", [{"title": "a", "start_segment": 0}])[0]["title"] = title
        bad.pop("rating", None)
        return dumps(bad).encode()

    uncited = {k: v for k, v in event.items() if k != "prediction_id"} | {"transcript_id": "never-served"}
    good_t = transcript(rng, "hostile")
    return [
        ("feedback: lone surrogate", "/v1/feedback", with_title("x \ud800"), AUTH, {422}),
        ("feedback: title over bound", "/v1/feedback", with_title("x" * 2000), AUTH, {422}),
        ("feedback: over max_feedback_bytes", "/v1/feedback", with_title("x" * 200_000), AUTH, {413}),
        ("feedback: cites no prediction", "/v1/feedback", dumps(uncited).encode(), AUTH, {422}),
        ("feedback: no token", "/v1/feedback", dumps(event).encode(), JSON, {401}),
        ("feedback: malformed, no token", "/v1/feedback", b"{not json", JSON, {401}),
        ("feedback: invalid JSON", "/v1/feedback", b'{"a": ', AUTH, {422}),
        ("feedback: not UTF-8", "/v1/feedback", b"\xff\xfe\xfd", AUTH, {422}),
        ("feedback: start_segment true", "/v1/feedback",
         dumps({**event, "predicted": [{"title": "a", "start_segment": True}]}).encode(), AUTH, {422}),
        ("chapters: lone surrogate", "/v1/chapters",
         dumps({**good_t, "segments": [{"text": "x \ud800"}]}).encode(), JSON, {422}),
        ("chapters: invalid JSON", "/v1/chapters", b"{not json", JSON, {422}),
        ("chapters: not UTF-8", "/v1/chapters", b"\xff" * 64, JSON, {422}),
        ("chapters: start true", "/v1/chapters", dumps({"id": "x", "segments": [{"text": "a", "start": True}]}).encode(),
         JSON, {422}),
        ("chapters: 20,001-char segment", "/v1/chapters",
         dumps({"id": "x", "segments": [{"text": "y" * 20_001}]}).encode(), JSON, {413, 422}),
        ("chapters: 20,000-char segment", "/v1/chapters",
         dumps({"id": "long", "segments": [{"text": "漢😀" * 10_000}, {"text": "end"}]}).encode(), JSON, {200}),
        ("chapters: deep nesting", "/v1/chapters", b"[" * 20_000 + b"]" * 20_000, JSON, {422}),
        ("chapters: over max_request_bytes", "/v1/chapters", b" " * (MAX_REQUEST_BYTES + 1), JSON, {413}),
        ("chapters: wrong content type", "/v1/chapters", b"hello", {"content-type": "text/plain"}, {415}),
        ("chapters: no segments", "/v1/chapters", b'{"id": "x", "segments": []}', JSON, {422}),
    ]


@dataclass
class Tally:
    """Everything the workers saw; one lock, merged at the end."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    unexpected_5xx: list[str] = field(default_factory=list)
    overload_5xx: int = 0
    unexpected_status: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=lambda: {"chapters": [], "feedback": []})
    acked: dict[str, int] = field(default_factory=dict)  # idempotency key -> event id the server acknowledged
    replays_consistent: int = 0
    replays_inconsistent: list[str] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def record(self, name: str, status: int, expected: set[int], detail: str = "") -> None:
        with self.lock:
            self.requests += 1
            self.statuses[status] += 1
            if status >= 500 and status not in expected:
                if status in (503, 504):
                    self.overload_5xx += 1
                else:
                    self.unexpected_5xx.append(f"{name}: {status} {detail[:200]}")
            elif status not in expected:
                self.unexpected_status.append(f"{name}: {status} (expected {sorted(expected)}) {detail[:200]}")


def worker(base: str, deadline: float, budget: threading.Semaphore, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=60) as client:
        while time.monotonic() < deadline and budget.acquire(blocking=False):
            roll = rng.random()
            try:
                if roll < 0.4 or not tally.predictions:
                    _valid_chapters(client, rng, tally)
                elif roll < 0.6:
                    _valid_feedback(client, rng, tally)
                else:
                    with tally.lock:
                        served = rng.choice(tally.predictions)
                    name, path, raw, headers, expected = rng.choice(hostile_cases(served, rng))
                    r = client.post(path, content=raw, headers=headers)
                    tally.record(name, r.status_code, expected, r.text)
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.transport_errors.append(f"{type(exc).__name__}: {exc}"[:200])


def _valid_chapters(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
    t0 = time.perf_counter()
    r = client.post("/v1/chapters", json=transcript(rng, f"soak-{uuid.uuid4().hex[:12]}"))
    elapsed = time.perf_counter() - t0
    tally.record("chapters: valid", r.status_code, {200}, r.text)
    if r.status_code == 200:
        with tally.lock:
            tally.latency["chapters"].append(elapsed)
            tally.predictions.append(r.json())
            if len(tally.predictions) > 500:
                tally.predictions.pop(0)


def _valid_feedback(client: httpx.Client, rng: random.Random, tally: Tally) -> None:
    with tally.lock:
        served = rng.choice(tally.predictions)
    key = uuid.uuid4().hex
    body = feedback_for(served, rng)
    t0 = time.perf_counter()
    r = client.post("/v1/feedback", json=body, headers={**AUTH, "Idempotency-Key": key})
    elapsed = time.perf_counter() - t0
    tally.record("feedback: valid", r.status_code, {201}, r.text)
    if r.status_code != 201:
        return
    event_id = r.json()["id"]
    with tally.lock:
        tally.latency["feedback"].append(elapsed)
        tally.acked[key] = event_id
    if rng.random() < 0.1:  # the client did not see the answer and retries
        again = client.post("/v1/feedback", json=body, headers={**AUTH, "Idempotency-Key": key})
        tally.record("feedback: retry", again.status_code, {201}, again.text)
        with tally.lock:
            if again.status_code == 201 and again.json()["id"] == event_id and again.json()["replayed"]:
                tally.replays_consistent += 1
            else:
                tally.replays_inconsistent.append(f"{key}: {again.status_code} {again.text[:200]}")


def slow_clients(port: int, deadline: float, results: Counter, rounds_every_s: float = 10.0) -> None:
    """Every few seconds: 5 bodies that never finish (must get 408 within the read timeout + 3 s) and
    5 headers that never finish (closed only with `serve.run_server`'s header timeout)."""
    while time.monotonic() < deadline - (READ_TIMEOUT_S + 4):
        socks = []
        for i in range(10):
            sock = socket.create_connection((HOST, port), timeout=5)
            if i < 5:
                sock.sendall(b"POST /v1/chapters HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 5000\r\n\r\n{\"id\": ")
            else:
                sock.sendall(b"POST /v1/chapters HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        t0 = time.monotonic()
        for i, sock in enumerate(socks):
            kind = "body" if i < 5 else "headers"
            sock.settimeout(max(0.1, READ_TIMEOUT_S + 3 - (time.monotonic() - t0)))
            try:
                data = sock.recv(4096)
                cut = data.startswith(b"HTTP/1.1 408") if kind == "body" else data == b""
                results[f"slow {kind}: {'cut' if cut else 'other answer'}"] += 1
            except TimeoutError:  # expected for headers under the cli launcher (no header timeout there)
                results[f"slow {kind}: still open after {READ_TIMEOUT_S + 3:g} s"] += 1
            except ConnectionResetError:
                results[f"slow {kind}: cut"] += 1
            finally:
                sock.close()
        time.sleep(rounds_every_s)


# ------------------------------------------------------------------------------------------------ check


def stored_events(db: Path) -> dict[str, list[int]]:
    """Idempotency key -> stored event ids, read from the SQLite store after the server stopped."""
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT idempotency_key, id FROM feedback_events").fetchall()
    out: dict[str, list[int]] = {}
    for key, event_id in rows:
        out.setdefault(key, []).append(event_id)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="chaptering-soak-"))
    port = free_port()
    base = f"http://{HOST}:{port}"
    log_path = state / "serve.log"
    cmd, env = server_command(state, port, args.model, list(args.set or []), args.launcher)
    tally, slow = Tally(), Counter()
    rss: list[float] = []
    with server_process(cmd, f"{base}/healthz", log_path, env=env, cwd=ROOT, name="chaptering serve",
                        ready_s=180) as proc:
        rss_start_raw = rss_mb(proc.pid)
        with httpx.Client(base_url=base, timeout=60) as warm:  # warm-up, then the baseline RSS
            for i in range(20):
                warm.post("/v1/chapters", json=transcript(random.Random(i), f"warm-{i}"))
        rss_start = rss_mb(proc.pid)
        t_start = time.monotonic()
        deadline = t_start + args.duration
        budget = threading.Semaphore(args.max_requests)
        threads = [threading.Thread(target=worker, args=(base, deadline, budget, tally, args.seed + i), daemon=True)
                   for i in range(args.workers)]
        threads.append(threading.Thread(target=slow_clients, args=(port, deadline, slow), daemon=True))
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            value = rss_mb(proc.pid)
            if value is not None:
                rss.append(value)
            time.sleep(2)
            if time.monotonic() > deadline + 90:  # a stuck worker must not stop the bench from ending
                break
        elapsed = time.monotonic() - t_start
        rss_end = rss_mb(proc.pid)
        server_alive = proc.poll() is None
    stored = stored_events(state / "feedback.db")
    lost = sorted(k for k in tally.acked if k not in stored)
    twice = sorted(k for k, ids in stored.items() if k is not None and len(ids) > 1)
    wrong_id = sorted(k for k, event_id in tally.acked.items() if k in stored and stored[k] != [event_id])
    ms = {name: {f"p{q}": round(1000 * v, 1) if (v := percentile(vals, q)) is not None else None
                 for q in (50, 95, 99)} | {"n": len(vals)} for name, vals in tally.latency.items()}
    return {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "model": args.model, "launcher": args.launcher, "duration_s": round(elapsed, 1), "workers": args.workers, "seed": args.seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "requests": tally.requests, "requests_per_s": round(tally.requests / max(elapsed, 1e-9), 1),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "unexpected_5xx": len(tally.unexpected_5xx), "unexpected_5xx_examples": tally.unexpected_5xx[:10],
        "overload_503_504": tally.overload_5xx,
        "unexpected_status": len(tally.unexpected_status), "unexpected_status_examples": tally.unexpected_status[:10],
        "transport_errors": len(tally.transport_errors), "transport_error_examples": tally.transport_errors[:10],
        "feedback_acknowledged": len(tally.acked), "feedback_stored": sum(len(v) for v in stored.values()),
        "feedback_lost": len(lost), "feedback_stored_twice": len(twice), "feedback_wrong_id": len(wrong_id),
        "idempotent_retries_consistent": tally.replays_consistent,
        "idempotent_retries_inconsistent": len(tally.replays_inconsistent),
        "latency_ms": ms,
        "rss_mb": {"after_start": rss_start_raw, "after_warmup": rss_start, "end": rss_end,
                   "peak": max(rss) if rss else None,
                   "growth_after_warmup": round(rss_end - rss_start, 1) if rss_end and rss_start else None},
        "slow_clients": dict(slow),
        "server_alive_at_end": server_alive,
        "state": str(state),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    ap.add_argument("--workers", type=int, default=4, help="client threads (1-8)")
    ap.add_argument("--max-requests", type=int, default=50_000, help="stop after this many requests")
    ap.add_argument("--model", default="baseline:equal", help="--model of chaptering serve (default: a cheap baseline)")
    ap.add_argument("--launcher", choices=["cli", "run_server"], default="cli",
                    help="cli: `chaptering serve` (default); run_server: chaptering.serve.run_server")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--set", action="append", help="extra serve --set overrides")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    ap.add_argument("--keep-state", action="store_true", help="keep the scratch state folder (store, log)")
    args = ap.parse_args()
    args.workers = max(1, min(8, args.workers))
    args.duration = max(5.0, min(args.duration, 1800.0))
    result = run(args)
    bad = result["unexpected_5xx"] or result["feedback_lost"] or result["feedback_stored_twice"] \
        or result["unexpected_status"] or not result["server_alive_at_end"]
    if not (bad or args.keep_state):  # the scratch store and log only matter when something went wrong
        shutil.rmtree(result.pop("state"), ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    keys = ("requests", "unexpected_5xx", "unexpected_status", "feedback_acknowledged", "feedback_lost",
            "feedback_stored_twice", "latency_ms", "rss_mb", "slow_clients")
    print(json.dumps({k: result[k] for k in keys}, indent=2, ensure_ascii=False))
    print(f"wrote {args.out}" + (f"; server state and log kept in {result['state']}" if "state" in result else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
