"""Load test of the service over loopback: `python bench/serve.py [--n 20] [--concurrency 4]`.

Starts `chaptering serve` in a subprocess on a free 127.0.0.1 port (the champion, else the base model,
or `--model-spec`), waits until /healthz is ready, sends N real held-out transcripts (videos only by
default: they are short) with at most C requests in flight, and reports p50/p95 latency, throughput
and errors as a table and as JSON (out/bench/serve.json). Predictions go to a scratch feedback store
under the output folder unless --keep-feedback, so a benchmark never mixes into real traffic.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from measure import percentile

from chaptering.server_process import free_port, server_process

ROOT = Path(__file__).resolve().parent.parent


def load_payloads(path: Path, include_all: bool) -> list[dict[str, Any]]:
    from chaptering.io import read_transcripts

    transcripts = [t for t in read_transcripts(path) if include_all or not t.source.startswith("qmsum")]
    if not transcripts:
        raise SystemExit(f"no transcripts to send from {path}")
    return [t.model_dump(mode="json", exclude={"chapters"}) for t in transcripts]


def server_command(args: argparse.Namespace, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "chaptering.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--model", args.model_spec]
    overrides = list(args.set)
    if not args.keep_feedback:
        overrides.append(f"feedback_url=sqlite:///{(args.out.parent / 'serve-feedback.db').resolve()}")
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def one_request(client: httpx.Client, base: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        r = client.post(f"{base}/v1/chapters", json=payload, timeout=timeout)
        status, body = r.status_code, (r.json() if r.headers.get("content-type", "").startswith(
            "application/json") else {})
    except httpx.HTTPError as exc:
        status, body = 0, {"detail": f"{type(exc).__name__}: {exc}"}
    return {
        "id": payload["id"],
        "segments": len(payload["segments"]),
        "status": status,
        "latency_s": round(time.perf_counter() - t0, 4),
        "server_latency_s": body.get("latency_s"),
        "generation_s": body.get("generation_s"),
        "chapters": len(body.get("chapters") or []),
        "model_version": body.get("model_version"),
        "error": None if status == 200 else str(body.get("detail", ""))[:200],
    }


def summarise(results: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if r["status"] == 200]
    lat = [r["latency_s"] for r in ok]
    srv = [r["server_latency_s"] for r in ok if r["server_latency_s"] is not None]
    gen = [r["generation_s"] for r in ok if r["generation_s"] is not None]
    errors: dict[str, int] = {}
    for r in results:
        if r["status"] != 200:
            errors[str(r["status"])] = errors.get(str(r["status"]), 0) + 1
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": errors,
        "wall_s": round(wall_s, 3),
        "throughput_rps": round(len(ok) / wall_s, 4) if wall_s > 0 else None,
        "latency_s": {
            "p50": percentile(lat, 50), "p95": percentile(lat, 95),
            "mean": round(statistics.fmean(lat), 4) if lat else None, "max": max(lat) if lat else None,
        },
        "server_latency_s": {"p50": percentile(srv, 50), "p95": percentile(srv, 95)},
        "generation_s": {"p50": percentile(gen, 50), "p95": percentile(gen, 95)},
        "mean_segments": round(statistics.fmean(r["segments"] for r in results), 1) if results else None,
    }


def table(report: dict[str, Any]) -> str:
    s = report["summary"]
    lat, srv, gen = s["latency_s"], s["server_latency_s"], s["generation_s"]

    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [
        ("model", f"{report['model'].get('model')} (version {report['model'].get('version')})"),
        ("requests / concurrency", f"{s['requests']} / {report['concurrency']}"),
        ("ok / errors", f"{s['ok']} / {s['errors'] or 0}"),
        ("latency p50 / p95 (s)", f"{f(lat['p50'])} / {f(lat['p95'])}"),
        ("in service p50 / p95 (s)", f"{f(srv['p50'])} / {f(srv['p95'])}"),
        ("generating p50 / p95 (s)", f"{f(gen['p50'])} / {f(gen['p95'])}"),
        ("throughput (req/s)", f(s["throughput_rps"])),
        ("wall (s)", f(s["wall_s"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="requests to send (cycling through the transcripts)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    ap.add_argument("--model-spec", default="champion", help="champion | base | models:/NAME/VER | PATH")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "eval" / "heldout.jsonl")
    ap.add_argument("--all", action="store_true", help="also send the long meetings (QMSum)")
    ap.add_argument("--set", action="append", default=[], help="setting override for the server")
    ap.add_argument("--warmup", type=int, default=1, help="untimed requests first")
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--startup-timeout", type=float, default=900.0)
    ap.add_argument("--keep-feedback", action="store_true", help="record predictions in the real store")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench" / "serve.json")
    args = ap.parse_args()

    payloads = load_payloads(args.data, args.all)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = args.out.with_suffix(".server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with server_process(server_command(args, port), f"{base}/healthz", log_path, cwd=ROOT,
                        name="chaptering serve", ready_s=args.startup_timeout):
        startup_s = time.perf_counter() - t0
        model = httpx.get(f"{base}/v1/model", timeout=10).json()
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        with httpx.Client(limits=limits) as client:
            for i in range(args.warmup):
                one_request(client, base, payloads[i % len(payloads)], args.request_timeout)
            jobs = [payloads[i % len(payloads)] for i in range(args.n)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(lambda p: one_request(client, base, p, args.request_timeout), jobs))
            wall = time.perf_counter() - t0
    report = {
        "model": {k: model.get(k) for k in ("version", "model", "source")},
        "concurrency": args.concurrency,
        "server_overrides": args.set,
        "data": str(args.data),
        "startup_s": round(startup_s, 2),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "summary": summarise(results, wall),
        "requests": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"\nwrote {args.out} (server log: {log_path})")
    if report["summary"]["errors"]:
        for r in results:
            if r["error"]:
                print(f"  {r['id']}: {r['status']} {r['error']}")


if __name__ == "__main__":
    main()
