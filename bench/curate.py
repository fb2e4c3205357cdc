"""Curation at scale, fanned out on Dask: `python bench/curate.py --sizes 20000 100000 --workers 1 2`.

Builds an N-transcript corpus by tiling the real training data with perturbations (fresh ids, shuffled
and dropped words, so most copies are *not* near duplicates; one in ten is a light-edit duplicate),
writes it as a run's ingested.jsonl, and curates it exactly as the nightly flow does: the
`curate-fanout` subflow maps `curate-shard` over shards on a DaskTaskRunner, then merges in order.
Each (size, workers) gets a fresh local cluster of single-threaded worker processes, so the peak RSS
read from each worker afterwards is that run's. The flow process (the merge with its on-disk dedup
index, the Dask scheduler and the Prefect client) is measured as well.

`--merge N` times the sequential merge alone over N screened transcripts.
`--index N` measures only the near-duplicate memory: N signatures into datasketch's in-memory LSH
(`NearDupIndex`, what curation used before) and into the on-disk `SeenIndex`, each in its own process.
Results are appended to out/bench/curate.jsonl, one JSON line a run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from chaptering.config import PROJECT_ROOT, get_settings
from chaptering.schema import Segment, Transcript

OUT = PROJECT_ROOT / "out" / "bench"


def tiled(seed_transcripts: list[Transcript], n: int, seed: int = 0) -> Iterator[Transcript]:
    """n perturbed copies, round-robin over the real transcripts; one in ten is a light-edit duplicate."""
    rng = random.Random(seed)
    for i in range(n):
        t = seed_transcripts[i % len(seed_transcripts)]
        near_copy = i % 10 == 9
        segs = []
        for s in t.segments:
            words = s.text.split()
            if not near_copy:
                rng.shuffle(words)
                words = [w for w in words if rng.random() > 0.1] or words[:1]
            segs.append(Segment(text=" ".join(words), start=s.start, end=s.end, speaker=s.speaker))
        yield t.model_copy(update={"id": f"{t.id}~bench{i}", "segments": segs})


def corpus(n: int) -> Path:
    """The n-transcript corpus as JSONL (built once per size; building it is not timed)."""
    from chaptering.io import read_transcripts, write_jsonl

    path = OUT / f"curate-corpus-{n}.jsonl"
    if not path.is_file():
        base = [t for p in sorted((PROJECT_ROOT / "data" / "train").glob("*.jsonl")) for t in read_transcripts(p)]
        write_jsonl(path, tiled(base, n))
    return path


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_fanout(n: int, workers: int, shards_per_worker: int) -> dict:
    """One curation of the n-corpus on a fresh local cluster of `workers` processes (call in a fresh process)."""
    from distributed import Client, LocalCluster
    from prefect import flow
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from chaptering.config import ScaleSettings
    from flows import nightly

    src = corpus(n)
    state = OUT / f"curate-state-{n}-{workers}"
    shutil.rmtree(state, ignore_errors=True)
    settings = get_settings().model_copy(update={"state_dir": state})
    run_dir = state / "runs" / "bench"
    run_dir.mkdir(parents=True)
    (run_dir / "ingested.jsonl").symlink_to(src)
    server = SubprocessASGIServer()  # one Prefect API for the flow and the workers (as a real server would be)
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by the worker processes
    with temporary_settings({PREFECT_API_URL: server.api_url}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        settings = settings.model_copy(update={"scale": ScaleSettings(
            dask_address=cluster.scheduler_address, shards=workers * shards_per_worker, min_curate_shard=1)})
        t0 = time.perf_counter()
        counts = flow(name="bench-curate")(nightly.curate_stage)(settings, run_dir)
        seconds = time.perf_counter() - t0
        worker_rss = sorted(round(v / 1024, 1) for v in client.run(
            lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values())
    result = {
        "n": n, "workers": workers, "shards": workers * shards_per_worker, "seconds": round(seconds, 1),
        "transcripts_per_s": round(n / seconds, 1), "accepted": counts["accepted"], "rejected": counts["rejected"],
        "peak_rss_mb_per_worker": worker_rss, "peak_rss_mb_flow_process": _rss_mb(),
        "corpus_mb": round(src.stat().st_size / 2**20), "cpus": os.cpu_count(), "load_avg_after": os.getloadavg(),
        "counts": counts,
    }
    shutil.rmtree(state, ignore_errors=True)
    return result


def run_index(n: int, kind: str) -> dict:
    """RSS growth of n random 128-permutation signatures in one near-duplicate index (fresh process)."""
    import tempfile

    import numpy as np

    from chaptering.curate_index import NearDupIndex, SeenIndex
    from chaptering.curate_text import minhash

    rng = np.random.default_rng(0)
    before = _rss_mb()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        if kind == "memory":
            index = NearDupIndex(0.8, 128)
            for i in range(n):
                sig = minhash(rng.integers(0, 2**32, 200, dtype=np.uint64).astype(np.uint32), 128)
                index.match(sig)
                index.add(Transcript(id=f"t{i}", segments=[Segment(text="x")]), sig)
            size = 0
        else:
            seen = SeenIndex(Path(tmp) / "seen.sqlite", 0.8, 128)
            for i in range(n):
                sig = minhash(rng.integers(0, 2**32, 200, dtype=np.uint64).astype(np.uint32), 128)
                seen.match(sig)
                seen.add(f"t{i}", f"{i:064x}", sig)
            seen.close()
            size = (Path(tmp) / "seen.sqlite").stat().st_size
    return {"index": kind, "n": n, "seconds": round(time.perf_counter() - t0, 1),
            "rss_growth_mb": round(_rss_mb() - before, 1), "peak_rss_mb": _rss_mb(), "file_mb": round(size / 2**20, 1)}


def run_merge(n: int) -> dict:
    """The sequential merge alone: the first n transcripts of the 20k corpus screened into one shard (not
    timed), then `merge_curation` timed, beside the pydantic round trip it used to do per transcript."""
    import itertools

    from chaptering.config import ScaleSettings
    from chaptering.curate import CurateStats
    from chaptering.shards import merge_curation, plan_curation, read_screened, screen_shard

    root = OUT / "merge-bench"
    shutil.rmtree(root, ignore_errors=True)
    settings = get_settings().model_copy(update={"state_dir": root / "state",
                                                 "scale": ScaleSettings(shards=1, min_curate_shard=1)})
    run_dir = root / "run"
    run_dir.mkdir(parents=True)
    with corpus(20_000).open(encoding="utf-8") as f, (run_dir / "ingested.jsonl").open("w", encoding="utf-8") as g:
        g.writelines(itertools.islice(f, n))
    parts = [screen_shard(settings, shard, root / "parts") for shard in plan_curation(settings, run_dir)]
    t0 = time.perf_counter()
    texts = [i.transcript.json for i in read_screened(parts) if hasattr(i, "transcript")]
    round_trip = [Transcript.model_validate_json(x).model_dump_json() for x in texts]
    round_trip_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    accepted = merge_curation(settings, run_dir, parts, [], CurateStats())
    merge_s = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    return {"merge": n, "accepted": accepted, "merge_s": round(merge_s, 2), "merge_per_s": round(n / merge_s),
            "pydantic_round_trip_s": round(round_trip_s, 2), "candidates": len(round_trip)}


def _child(fn, args, queue) -> None:
    queue.put(fn(*args))


def in_process(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    p.start()
    result = q.get()
    p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[20_000, 100_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shards-per-worker", type=int, default=4)
    ap.add_argument("--index", type=int, default=0, help="also measure the dedup indexes alone at this size")
    ap.add_argument("--merge", type=int, default=0, help="also time the merge alone over this many transcripts")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    runs = [(run_index, (args.index, kind)) for kind in ("memory", "disk") if args.index]
    runs += [(run_merge, (args.merge,))] if args.merge else []
    runs += [(run_fanout, (n, w, args.shards_per_worker)) for n in args.sizes for w in args.workers]
    for fn, fn_args in runs:
        r = in_process(fn, *fn_args)
        with (OUT / "curate.jsonl").open("a") as f:
            f.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **r}) + "\n")
        print(json.dumps(r), flush=True, file=sys.stdout)


if __name__ == "__main__":
    main()
