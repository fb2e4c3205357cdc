"""The README's quality table in one command: `python bench/quality.py [--model EXTRA ...]`.

Floors (random, single, equal, equal spacing with the reference count), TextTiling, embedding valleys,
the zero-shot base model with our prompt, and the champion when one exists, all on the
held-out set, per domain (yardstick v2: the headline is the macro F1 over domains). Greedy decoding and
seeded baselines: the same command gives the same numbers. Each model's report is kept under
bench/results/quality/<model>/, the combined tables in table.md and summary.json, with seconds per model.

`--workers N` scores N line-balanced ranges of the held-out set in N processes (shards.eval_ranges and
predict_range, as the nightly's Dask fan-out does): on a GPU the LLM rows are bound by kernel launches of
one window at a time, so processes sharing the card run nearly N times faster (`model.device` picks CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from chaptering.config import Settings, get_settings
from chaptering.evaluate import (
    Report,
    evaluate,
    fingerprint,
    full_markdown,
    markdown_table,
    plot_compare,
    result_key,
    write_report,
)
from chaptering.factory import load_chapterer
from chaptering.heldout import load_heldout
from chaptering.schema import Prediction, Transcript

# The seed prompt's row (`--model baseline:seed`) is not in the default list: on the v1 set every answer was
# unusable (docs/results-history.md), and on v2 it would cost another ~2 h of this CPU.
DEFAULT = ["baseline:random", "baseline:single", "baseline:equal", "baseline:equal-oracle", "baseline:texttiling",
           "baseline:embedding", "base"]


def _row(report: Report, note: str = "") -> str:
    return markdown_table([report]).splitlines()[-1] + note


def _set_threads(n: int) -> None:
    """Pool initializer: N processes on the cores, not N x cores threads spinning against each other."""
    import torch

    torch.set_num_threads(n)


_WORKER: dict = {}


def _load_worker(threads: int, settings: Settings, spec: str, data: Path) -> None:
    _set_threads(threads)
    _WORKER.update(chapterer=load_chapterer(spec, settings), transcripts=load_heldout(data))


def _predict_into(index: int, checkpoint: Path) -> None:
    evaluate(_WORKER["chapterer"], [_WORKER["transcripts"][index]], progress=False, checkpoint=checkpoint)


def fill_checkpoint(spec: str, settings: Settings, transcripts: list[Transcript], data: Path, workers: int,
                    checkpoint: Path) -> None:
    """Predict every transcript not yet in `checkpoint`, one task each, longest first, over `workers`
    processes that load the model once: fixed ranges left one process idle while the other still had an
    hour of talks (lines of a talk and of a meeting do not cost the same)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from chaptering.evaluate import checkpointed

    todo = sorted((i for i, t in enumerate(transcripts) if not checkpointed(checkpoint, t.id)),
                  key=lambda i: -len(transcripts[i].segments))
    if not todo:
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_load_worker,
                             initargs=(threads, settings, spec, data)) as pool:
        futures = [pool.submit(_predict_into, i, checkpoint) for i in todo]
        for n, done in enumerate(as_completed(futures), start=1):
            done.result()  # a failed transcript stops the run now
            print(f"  {spec}: {n}/{len(todo)} predicted", flush=True)


def evaluate_parallel(spec: str, settings: Settings, transcripts: list[Transcript], data: Path,
                      workers: int) -> tuple[Report, list[Prediction]]:
    """`evaluate` over `workers` processes, each scoring one line-balanced range; the same rows, merged."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from chaptering.shards import eval_ranges, predict_range, report_from_parts

    settings = settings.model_copy(update={"data": settings.data.model_copy(update={"eval_path": data})})
    scale = settings.scale.model_copy(update={"shards": workers, "min_eval_shard": 1})
    ranges = eval_ranges(len(transcripts), scale, [len(t.segments) for t in transcripts])
    threads = max(1, (os.cpu_count() or 1) // len(ranges))
    with ProcessPoolExecutor(len(ranges), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_set_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(predict_range, settings, spec, a, b) for a, b in ranges]
        for done in as_completed(futures):  # a failed range stops the run now, not after the others
            done.result()
        parts = [f.result() for f in futures]
    name = next((json.loads(item["prediction"])["model"] for part in parts for item in part), spec)
    return report_from_parts(name, str(data), transcripts, parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--model", action="append", default=[], help="extra models (champion, PATH, models:/...)")
    ap.add_argument("--only", action="append", default=None, help="run just these models")
    ap.add_argument("--skip", action="append", default=[], help="leave these out of the default list")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quality")
    ap.add_argument("--fresh", action="store_true", help="re-run fixed models even if a matching report is stored")
    ap.add_argument("--workers", type=int, default=1, help="score line-balanced ranges in this many processes")
    args = ap.parse_args()
    settings = get_settings().prepare()
    data = args.data or settings.data.eval_path
    transcripts = load_heldout(data)
    specs = args.only or [s for s in DEFAULT if s not in args.skip] + args.model
    reports, seconds = [], {}
    for spec in specs:
        out = args.out / spec.replace(":", "-").replace("/", "_")
        key = result_key(spec, transcripts, settings)
        stored = out / "report.json"
        t0 = time.perf_counter()
        # Fixed models (baselines, the base model) give the same numbers for the same key: reuse them.
        if spec in DEFAULT and not args.fresh and stored.is_file() and (out / "key.json").is_file() \
                and (out / "key.json").read_text() == key:
            reports.append(Report.from_json(stored.read_text()))
            print(_row(reports[-1], "  (stored)"), flush=True)
            continue
        if spec == "champion" and not args.fresh:  # the report the gate promoted it on, from the registry
            from chaptering.registry import champion_report

            stored_champion = champion_report(settings)
            if stored_champion is not None and stored_champion.data_fingerprint == fingerprint(transcripts):
                reports.append(stored_champion)
                print(_row(reports[-1], "  (registered report)"), flush=True)
                continue
        if spec == "base" and args.workers > 1:  # fill the shared checkpoint in parallel, then as below
            fill_checkpoint(spec, settings, transcripts, data, args.workers, out / f"partial-{key}")
        if args.workers > 1 and spec != "base":
            report, predictions = evaluate_parallel(spec, settings, transcripts, data, args.workers)
            write_report(report, predictions, transcripts, out)
            (out / "key.json").write_text(key)
            reports.append(report)
        elif spec == "base":  # the same cached report the nightly gate compares against
            from chaptering.pipeline import base_report

            # hours on a CPU: predictions so far are kept beside the results (committed; named by the
            # key, so a changed prompt or setting starts afresh), and the row resumes in any checkout
            reports.append(base_report(settings, checkpoint=out / f"partial-{key}"))
            out.mkdir(parents=True, exist_ok=True)
            stored.write_text(reports[-1].to_json())
            (out / "key.json").write_text(key)
        else:
            try:
                chapterer = load_chapterer(spec, settings)
            except LookupError as e:  # e.g. no champion yet
                print(f"skip {spec}: {e}")
                continue
            report, predictions = evaluate(chapterer, transcripts, data_name=str(data))
            write_report(report, predictions, transcripts, out)
            (out / "key.json").write_text(key)
            reports.append(report)
        seconds[reports[-1].model] = round(time.perf_counter() - t0, 1)
        print(_row(reports[-1], f"  ({seconds[reports[-1].model]} s)"), flush=True)
    if not reports:
        return
    table = full_markdown(reports)
    print(f"\nheld-out: {data} ({len(transcripts)} transcripts, fingerprint {reports[0].data_fingerprint})\n")
    print(table)
    if args.only:  # a partial run: its reports are under out/<model>/; the combined table stays whole
        return
    (args.out / "table.md").write_text(table + "\n")
    plot_compare(reports, args.out / "compare.png")
    (args.out / "summary.json").write_text(json.dumps(
        {r.model: {"headline": r.headline, "domains": r.domains, "seconds": seconds.get(r.model)}
         for r in reports}, indent=2))


if __name__ == "__main__":
    main()
