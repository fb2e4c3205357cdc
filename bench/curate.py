"""Curation at scale: `python bench/curate.py --sizes 10000 100000`.

Builds an N-transcript corpus by tiling the real training data with perturbations (fresh ids, word
drops, shuffled sentence order inside chapters, so most copies are *not* near duplicates), streams it
through the same `curate()` the nightly flow uses, and reports transcripts/s and peak RSS per size.
The corpus is generated lazily, so memory measures curation, not the generator. Each size runs in
its own process so peak RSS is per size.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import resource
import time
from collections.abc import Iterator

from chaptering.config import PROJECT_ROOT, get_settings
from chaptering.schema import Segment, Transcript

OUT = PROJECT_ROOT / "out" / "bench" / "curate.json"


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


def _run(n: int, queue: mp.Queue) -> None:
    from chaptering.curate import ContaminationGuard, CurateStats, curate
    from chaptering.heldout import load_heldout
    from chaptering.io import read_transcripts

    settings = get_settings()
    base = [t for p in sorted((PROJECT_ROOT / "data" / "train").glob("*.jsonl")) for t in read_transcripts(p)]
    guard = ContaminationGuard(load_heldout(settings.data.eval_path))
    rejected: list = []
    stats = CurateStats()
    t0 = time.perf_counter()
    accepted = sum(1 for _ in curate(tiled(base, n), settings=settings.data, guard=guard, rejected=rejected,
                                     stats=stats))
    seconds = time.perf_counter() - t0
    queue.put({
        "n": n, "accepted": accepted, "rejected": len(rejected), "seconds": round(seconds, 1),
        "transcripts_per_s": round(n / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "stats": stats.to_dict(),
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = ap.parse_args()
    results = []
    ctx = mp.get_context("spawn")
    for n in args.sizes:
        q: mp.Queue = ctx.Queue()
        p = ctx.Process(target=_run, args=(n, q))
        p.start()
        results.append(q.get())
        p.join()
        r = results[-1]
        print(f"{n:>8} transcripts: {r['transcripts_per_s']:>7.1f}/s, {r['seconds']:>7.1f} s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, accepted {r['accepted']}, rejected {r['rejected']}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
