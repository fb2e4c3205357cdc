"""Curation and evaluation cut into shards, so a task runner can spread them over workers.

Curation: `plan_curation` cuts the corpus and this run's ingested file into line-aligned byte ranges;
`screen_shard` runs the per-record stages (`curate.screen`, the expensive part: language detection,
PII, MinHash) over one range and writes what it found to a shard file; `merge_curation` reads the shard
files back in input order and runs `curate.resolve`, the one order-dependent step, against a dedup
memory on disk. A near duplicate in another shard is therefore caught exactly as in one pass: every
signature meets the same LSH index, in the same order.

Evaluation: `eval_ranges` cuts the held-out set into contiguous ranges, `predict_range` scores one
range, and `merge_eval` puts the rows back in order and builds the report as `evaluate` does.
Nothing here knows about Prefect or Dask: flows/nightly.py maps these functions over shards.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from chaptering.curate import Candidate, Known, Turned
from chaptering.io import Rejected
from chaptering.iobase import _atomic_write
from chaptering.schema import Transcript

if TYPE_CHECKING:
    from chaptering.config import ScaleSettings, Settings
    from chaptering.curate import CurateStats
    from chaptering.run_types import EvalOutcome, TrainOutcome


@dataclass(frozen=True)
class Shard:
    """Lines [first_line, ...) of `path` held in bytes [start, end); `known` shards seed dedup only."""

    path: Path
    kind: Literal["known", "new"]
    index: int
    start: int
    end: int
    first_line: int


def _count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def shard_count(records: int, minimum: int, scale: ScaleSettings) -> int:
    """Shards for `records`: at most `scale.shards`, none smaller than `minimum` records (at least one)."""
    return max(1, min(scale.shards, math.ceil(records / max(1, minimum))) if records else 1)


def plan_file(path: Path, n: int, kind: Literal["known", "new"]) -> list[Shard]:
    """`path` cut into at most `n` line-aligned byte ranges of about equal size (empty ones dropped)."""
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as f:
        for i in range(1, n):
            f.seek(max(size * i // n - 1, cuts[-1]))
            f.readline()  # to the start of the next line
            cuts.append(min(f.tell(), size))
    cuts.append(size)
    shards, line = [], 1
    with path.open("rb") as f:
        for start, end in itertools.pairwise(cuts):
            if end > start:
                shards.append(Shard(path, kind, len(shards), start, end, line))
                f.seek(start)
                line += f.read(end - start).count(b"\n")
    return shards


def plan_curation(settings: Settings, run_dir: Path, standalone: bool = False) -> list[Shard]:
    """Shards of the corpus (known, first) and of this run's ingested.jsonl, in the order curation reads them."""
    corpus = settings.state_dir / "corpus" / "curated.jsonl"
    plan: list[Shard] = []
    for path, kind in ((corpus, "known"), (run_dir / "ingested.jsonl", "new")):
        if kind == "known" and (standalone or not corpus.exists()):
            continue
        if path.exists():
            n = shard_count(_count_lines(path), settings.scale.min_curate_shard, settings.scale)
            plan += plan_file(path, n, kind)  # type: ignore[arg-type]
    return plan


def read_shard(shard: Shard) -> Iterator[Transcript]:
    """The shard's transcripts; a bad line raises InputError naming the file and line, as iter_transcripts does."""
    from chaptering.io import InputError, _parse_record

    with shard.path.open("rb") as f:
        f.seek(shard.start)
        lineno, pos = shard.first_line, shard.start
        while pos < shard.end:
            raw = f.readline()
            if not raw:
                break
            pos += len(raw)
            try:
                text = raw.decode("utf-8").removeprefix("\ufeff" if lineno == 1 else "")
            except UnicodeDecodeError as e:
                raise InputError(str(shard.path), f"line {lineno}", f"not valid UTF-8 ({e.reason})") from None
            if text.strip():
                yield _parse_record(text, Transcript, str(shard.path), f"line {lineno}", None)
            lineno += 1


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(values.tobytes()).decode("ascii")


def _unb64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.uint32)


@dataclass(frozen=True)
class RawTranscript:
    """An accepted transcript as the worker serialised it: the merge only needs its id, and writing the
    same JSON text back saves a pydantic round trip per record (the merge is the sequential part)."""

    id: str
    json: str


def _encode(item: Known | Candidate | Turned) -> str:
    """One screened record as JSON lines: a candidate's header line is followed by its transcript's line."""
    if isinstance(item, Known):
        return json.dumps({"known": [item.id, item.hash, _b64(item.signature)]}, ensure_ascii=False) + "\n"
    if isinstance(item, Turned):
        r = item.rejected
        return json.dumps({"turned": [item.stage, r.source, r.location, r.reason]}, ensure_ascii=False) + "\n"
    head = [item.transcript.id, item.hash, _b64(item.signature), item.guard, item.source, item.location]
    return json.dumps({"candidate": head}, ensure_ascii=False) + "\n" + item.transcript.model_dump_json() + "\n"


def _decode(line: str, lines: Iterator[str]) -> Known | Candidate | Turned:
    obj = json.loads(line)
    if "known" in obj:
        tid, h, sig = obj["known"]
        return Known(tid, h, _unb64(sig))
    if "turned" in obj:
        stage, source, location, reason = obj["turned"]
        return Turned(stage, Rejected(source=source, location=location, reason=reason))
    tid, h, sig, guard, source, location = obj["candidate"]
    return Candidate(RawTranscript(tid, next(lines).rstrip("\n")), h, _unb64(sig), guard, source,  # type: ignore[arg-type]
                     location)


def screen_shard(settings: Settings, shard: Shard, out_dir: Path) -> Path:
    """The per-record stages over one shard -> out_dir/<kind>-<index>.jsonl (one screened record a line)."""
    from chaptering.curate import ContaminationGuard, known_entry, screen
    from chaptering.heldout import load_heldout

    data = settings.data
    if shard.kind == "known":
        items: Iterable[Known | Candidate | Turned] = (known_entry(k, data) for k in read_shard(shard))
    else:
        guard = ContaminationGuard(load_heldout(data.eval_path))
        items = (screen(raw, data, guard) for raw in read_shard(shard))
    out = out_dir / f"{shard.kind}-{shard.index:05d}.jsonl"
    _atomic_write(out, (_encode(item) for item in items))
    return out


def read_screened(paths: Iterable[Path]) -> Iterator[Known | Candidate | Turned]:
    """The records `screen_shard` wrote, in order; a candidate's transcript stays the JSON text it was."""
    for path in paths:
        with path.open(encoding="utf-8") as f:
            lines = iter(f)
            yield from (_decode(line, lines) for line in lines)


def merge_curation(settings: Settings, run_dir: Path, parts: list[Path], rejected: list[Rejected],
                   stats: CurateStats) -> int:
    """The screened shards, in plan order, through dedup -> run_dir/curated.jsonl (the same bytes
    `write_jsonl` gives); returns how many were accepted. The shard files are removed once merged."""
    from chaptering.curate import SeenIndex, resolve

    with tempfile.TemporaryDirectory(dir=run_dir, prefix="curate-") as scratch:
        seen = SeenIndex(Path(scratch) / "seen.sqlite", settings.data.near_dup_threshold, settings.data.minhash_perm)
        before = stats.accepted
        try:
            accepted = resolve(read_screened(parts), seen=seen, rejected=rejected, stats=stats)
            _atomic_write(run_dir / "curated.jsonl", (t.json + "\n" for t in accepted))  # type: ignore[attr-defined]
        finally:
            seen.close()
    for p in parts:
        p.unlink(missing_ok=True)
    return stats.accepted - before


# ------------------------------------------------------------------------------------------- evaluation


def eval_ranges(n: int, scale: ScaleSettings, sizes: list[float] | None = None) -> list[tuple[int, int]]:
    """[start, end) index ranges over an n-transcript held-out set, contiguous and in order; with `sizes`
    (the expected cost of each transcript: `eval_cost`, or its lines) each range holds about the same
    total, not the same count: the set is ordered by domain, and equal counts gave one worker the 60
    short videos and the other every hour-long talk and meeting."""
    k = shard_count(n, scale.min_eval_shard, scale)
    if not sizes or k <= 1:
        return [(n * i // k, n * (i + 1) // k) for i in range(k) if n * (i + 1) // k > n * i // k] or [(0, 0)]
    total, cuts, acc = sum(sizes), [0], 0
    for i, size in enumerate(sizes[:-1], start=1):
        acc += size
        if len(cuts) < k and acc >= total * len(cuts) / k:
            cuts.append(i)
    cuts.append(n)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def predict_range(settings: Settings, spec: str, start: int, end: int) -> list[dict[str, Any]]:
    """Score transcripts [start, end) of the held-out set with the model `spec` names: one dict a
    transcript with its score row and its prediction (as JSON, so it travels between processes)."""
    from chaptering.evaluate import evaluate
    from chaptering.factory import load_chapterer
    from chaptering.heldout import load_heldout

    transcripts = load_heldout(settings.data.eval_path)[start:end]
    if not transcripts:
        return []
    report, predictions = evaluate(load_chapterer(spec, settings), transcripts, progress=False)
    return [{"row": row, "prediction": p.model_dump_json()} for row, p in zip(report.rows, predictions)]


def report_from_parts(name: str, data_name: str, transcripts: list[Transcript],
                      parts: list[list[dict[str, Any]]]) -> tuple[Any, list[Any]]:
    """The report and predictions of ranges scored by `predict_range`, in order, as `evaluate` gives
    them in one process; the predictions are renamed `name`."""
    from chaptering.evaluate import fingerprint, report_from_rows
    from chaptering.schema import Prediction

    scored = [item for part in parts for item in part]
    if [json.loads(item["prediction"])["id"] for item in scored] != [t.id for t in transcripts]:
        raise ValueError(f"evaluation shards scored {len(scored)} of {len(transcripts)} held-out transcripts")
    predictions = [Prediction.model_validate_json(item["prediction"]).model_copy(update={"model": name})
                   for item in scored]
    return report_from_rows(name, data_name, fingerprint(transcripts), [item["row"] for item in scored]), predictions


def merge_eval(settings: Settings, outcome: TrainOutcome, run_dir: Path,
               parts: list[list[dict[str, Any]]]) -> EvalOutcome:
    """The challenger's report from its scored ranges, beside the champion or the references, as
    `model_stages.evaluate_stage` builds it in one process."""
    from chaptering.evaluate import write_report
    from chaptering.heldout import load_heldout
    from chaptering.model_stages import champion_on_heldout, reference_report
    from chaptering.run_types import EvalOutcome

    transcripts = load_heldout(settings.data.eval_path)
    report, predictions = report_from_parts(f"challenger:{run_dir.name}", str(settings.data.eval_path),
                                            transcripts, parts)
    paths = write_report(report, predictions, transcripts, run_dir / "eval")
    champion = champion_on_heldout(settings)
    specs = [f"baseline:{b}" for b in settings.gate.baselines] + (["base"] if settings.gate.compare_base else [])
    references = [] if champion else [reference_report(spec, settings) for spec in specs]
    return EvalOutcome(report, champion, references, [paths["timeline"], paths["markdown"], paths["json"]])


# What scoring one held-out transcript costs the boundary chapterer on a 2-core CPU (measured in the
# 2026-12-05 fresh make run, docs/boundary-model.md): MiniLM ~65 us a character of a line not yet in the
# embedding cache, and ~0.45 s of title decoding a chapter. Lines alone put a range of talks (long lines)
# beside a range of meetings (short turns) that took 7 min less.
ENCODE_S_PER_CHAR = 65e-6
TITLE_S_PER_CHAPTER = 0.45


def eval_cost(transcript: Transcript, cache_dir: Path | None) -> float:
    """Expected seconds to score `transcript` with the boundary chapterer. Its reference chapter count
    stands in for the chapters the challenger will title (unknown until it runs); a transcript already
    embedded costs no MiniLM pass, which is what a warm nightly sees."""
    from chaptering.embeddings import is_embedded

    chars = 0 if is_embedded(transcript, cache_dir) else sum(len(s.text) for s in transcript.segments)
    return ENCODE_S_PER_CHAR * chars + TITLE_S_PER_CHAPTER * len(transcript.chapters)


def plan_eval(settings: Settings) -> list[tuple[int, int]]:
    """`eval_ranges` over the configured held-out set, balanced by expected cost: the boundary chapterer's
    `eval_cost`, or lines for the LLM chapterer (it decodes every line)."""
    from chaptering.heldout import load_heldout

    held = load_heldout(settings.data.eval_path)
    if settings.model.kind == "boundary":
        costs = [eval_cost(t, settings.cache_dir) for t in held]
    else:
        costs = [float(len(t.segments)) for t in held]
    return eval_ranges(len(held), settings.scale, costs)
