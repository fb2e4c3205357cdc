"""The nightly stages as plain functions over files, so the CLI and the Prefect flow share them.

Layout under state/:
  corpus/curated.jsonl      every transcript accepted so far (cumulative, deduplicated)
  corpus/feedback.jsonl     every feedback event accepted so far, with its transcript
  datasets/<key>/           sft/, dpo/, kto/, val/, stats.json, build.json (one per distinct input)
  runs/<run>/               ingested/curated files of this run, quarantine.jsonl, train/, eval/, summary.md
A run writes only into its own folder until `commit_stage`, which appends to the corpus and moves the
watermarks: a failed run changes nothing that the next run depends on. This module holds the data stages,
the commit and the run summary; the model stages live in model_stages.py and are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaptering.config import Settings
from chaptering.io import Rejected
from chaptering.model_stages import (  # the flow and the CLI call every stage through this module
    base_report,
    champion_on_heldout,
    evaluate_stage,
    export_stage,
    fit_boundary,
    reference_report,
    register_stage,
    train_config_hash,
    train_stage,
)
from chaptering.run_types import BOUNDARY_SET, BuildOutput, Decision, EvalOutcome, TrainOutcome, _to_dict

__all__ = [
    "BuildOutput", "Decision", "EvalOutcome", "TrainOutcome", "base_report", "champion_on_heldout", "commit_stage",
    "curate_merge_stage", "curate_stage", "dataset_stage", "evaluate_stage", "export_stage", "fit_boundary",
    "ingest_stage", "new_run_dir", "reference_report", "register_stage", "summarize", "train_config_hash", "train_stage", "write_boundary_set",
    "write_quarantine",
]


def new_run_dir(settings: Settings) -> Path:
    """A fresh folder for one run, claimed by this process (cleanup.recover marks it if we die)."""
    from chaptering.cleanup import claim

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = settings.state_dir / "runs" / stamp
    path.mkdir(parents=True, exist_ok=True)
    claim(path)
    return path


def _corpus(settings: Settings) -> Path:
    p = settings.state_dir / "corpus"
    p.mkdir(parents=True, exist_ok=True)
    return p


def write_quarantine(rejected: list[Rejected], path: Path) -> dict[str, int]:
    """Append rejected records (one JSON line each; `Rejected.to_dict` makes any text writable); count
    them by the kind of reason."""
    path.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with path.open("a", encoding="utf-8") as f:
        for r in rejected:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            kind = r.reason.split(":")[0].split("(")[0].split("'")[0].strip()[:50]
            counts[kind] = counts.get(kind, 0) + 1
    return counts


# --- data ---------------------------------------------------------------------------------------


def ingest_stage(settings: Settings, run_dir: Path, inputs: list[Path] | None = None, full: bool = False) -> dict[str, int]:
    """New external/internal files and feedback events since the last committed watermarks.

    No record can stop it: what cannot be read, validated or written goes to quarantine.jsonl with its
    reason, and the pending watermarks move past it (a row that failed tonight would fail every night).
    """
    from chaptering.feedback import FeedbackStore
    from chaptering.ingest import (
        Watermarks,
        feedback_records,
        ingest_feedback,
        ingest_files,
        quarantine_unwritable,
    )
    from chaptering.io import write_jsonl

    marks = Watermarks(settings.state_dir / "watermarks.json")
    if full:
        marks.reset()
    rejected: list[Rejected] = []
    ext = write_jsonl(run_dir / "ingested.jsonl", _chain(
        ingest_files(list(inputs or settings.data.inputs), marks, rejected, "external"),
        ingest_files([settings.data.internal_dir], marks, rejected, "internal")
        if settings.data.internal_dir.exists() else iter(()),
    ), on_error=quarantine_unwritable(rejected, "ingest"))
    store = FeedbackStore(settings.feedback_db)
    try:
        events = write_jsonl(run_dir / "feedback.jsonl",
                             feedback_records(ingest_feedback(store, marks, rejected), rejected))
    finally:
        store.close()
    marks.save_pending(run_dir / "watermarks.pending.json")
    q = write_quarantine(rejected, run_dir / "quarantine.jsonl")
    return {"transcripts": ext, "feedback_events": events, "quarantined": sum(q.values())}


def curate_stage(settings: Settings, run_dir: Path, standalone: bool = False) -> dict[str, int]:
    """Curate this run's transcripts against the corpus and the held-out set -> run_dir/curated.jsonl."""
    from chaptering.curate import ContaminationGuard, curate
    from chaptering.heldout import load_heldout
    from chaptering.io import iter_transcripts, write_jsonl

    corpus = _corpus(settings) / "curated.jsonl"
    rejected: list[Rejected] = []
    guard = ContaminationGuard(load_heldout(settings.data.eval_path))
    known = iter_transcripts(corpus) if corpus.exists() and not standalone else iter(())
    accepted = write_jsonl(run_dir / "curated.jsonl", curate(
        iter_transcripts(run_dir / "ingested.jsonl"), settings=settings.data, guard=guard,
        rejected=rejected, known=known, workdir=run_dir))
    return _curated(accepted, rejected, run_dir)


def curate_merge_stage(settings: Settings, run_dir: Path, parts: list[Path]) -> dict[str, int]:
    """`curate_stage` fanned out: the shard files `shards.screen_shard` wrote, deduplicated in order."""
    from chaptering.curate import CurateStats
    from chaptering.shards import merge_curation

    rejected: list[Rejected] = []
    return _curated(merge_curation(settings, run_dir, parts, rejected, CurateStats()), rejected, run_dir)


def _curated(accepted: int, rejected: list[Rejected], run_dir: Path) -> dict[str, int]:
    q = write_quarantine(rejected, run_dir / "quarantine.jsonl")
    return {"accepted": accepted, "rejected": sum(q.values()), **{f"rejected: {k}": v for k, v in q.items()}}


def _file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        if path.exists():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def _lines(*paths: Path) -> Iterator[str]:
    for p in paths:
        if p.exists():
            with p.open(encoding="utf-8") as f:
                yield from (line for line in f if line.strip())


def dataset_stage(settings: Settings, run_dir: Path, standalone: bool = False) -> BuildOutput:
    """Augment corpus + this run's transcripts and build SFT/DPO/KTO; unchanged input reuses a build.

    `standalone` (for `chaptering data build --out DIR`) uses only this run's files and builds under it.
    """
    from chaptering.augment import augment_stream
    from chaptering.curate import split_of
    from chaptering.datasets import (
        Windowing,
        dpo_rows_feedback,
        dpo_rows_synthetic,
        kto_rows_feedback,
        save_rows,
        sft_rows,
    )
    from chaptering.models import load_tokenizer, resolve_base
    from chaptering.prompt import PROMPT_VERSION
    from chaptering.schema import FeedbackEvent, Transcript
    from chaptering.titles import TITLE_PROMPT_VERSION, title_dpo_rows, title_rows

    corpus = run_dir if standalone else _corpus(settings)
    sources = list(dict.fromkeys([corpus / "curated.jsonl", run_dir / "curated.jsonl"]))
    feedback = list(dict.fromkeys([corpus / "feedback.jsonl", run_dir / "feedback.jsonl"]))
    knobs = json.dumps([settings.augment.model_dump(), settings.model.model_dump(exclude={"device"}),
                        settings.data.val_fraction, settings.seed, PROMPT_VERSION, TITLE_PROMPT_VERSION],
                       sort_keys=True, default=str)
    key = hashlib.sha256((_content_key(sources) + _content_key(feedback) + knobs).encode()).hexdigest()[:16]
    out = (run_dir if standalone else settings.state_dir) / "datasets" / key
    if (out / "build.json").is_file():
        return BuildOutput(**{**json.loads((out / "build.json").read_text()), "dir": out, "reused": True})

    tok = load_tokenizer(resolve_base(settings.model.base, settings.cache_dir))
    win = Windowing(tok, settings.model.context_tokens, settings.model.max_new_tokens)

    def split(name: str) -> Iterator[Transcript]:
        for line in _lines(*sources):
            t = Transcript.model_validate_json(line)
            if split_of(t.id, settings.data.val_fraction) == name:
                yield t

    def events() -> Iterator[tuple[FeedbackEvent, Transcript]]:
        for line in _lines(*feedback):
            row = json.loads(line)
            yield FeedbackEvent.model_validate(row["event"]), Transcript.model_validate(row["transcript"])

    fps, stats = {}, {}
    builds = {
        "sft": (sft_rows(augment_stream(split("train"), settings.augment), win), tok),
        "val": (sft_rows(split("val"), win), tok),
        "dpo": (_chain(dpo_rows_feedback(events(), win), dpo_rows_synthetic(split("train"), win, settings.seed)), None),
        "kto": (kto_rows_feedback(events(), win), None),
        "titles": (title_rows(split("train")), tok),
        "titles_dpo": (title_dpo_rows(events()), None),
    }
    for name, (rows, counter) in builds.items():
        fps[name], s = save_rows(rows, out / name, counter)
        stats[name] = s.to_dict()
    fps["boundary"], stats["boundary"] = write_boundary_set(_chain(split("train"), split("val")), events(),
                                                            out / BOUNDARY_SET)
    stats["feedback_events"] = sum(1 for _ in _lines(*feedback))
    stats["feedback_dpo_rows"] = stats["dpo"]["per_source"].get("feedback", 0) + sum(
        v for k, v in stats["dpo"]["per_source"].items() if k.startswith("feedback"))
    fingerprint = hashlib.sha256(json.dumps(fps, sort_keys=True).encode()).hexdigest()[:16]
    build = BuildOutput(out, fingerprint, fps, stats)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    (out / "build.json").write_text(json.dumps({k: v for k, v in _to_dict(build).items() if k not in ("dir", "reused")},
                                               indent=2))
    return build


def write_boundary_set(transcripts: Iterator[Any], events: Iterator[tuple[Any, Any]], path: Path) -> tuple[str, dict]:
    """The boundary model's training transcripts: every curated one, with the chapters a user corrected
    in place of the original labels (source `feedback`, so corrections weigh as one source of their own:
    a moved, added or removed boundary is a label for the next night's boundary model)."""
    by_id: dict[str, Any] = {t.id: t for t in transcripts if t.chapters}
    corrected = 0
    for ev, t in events:
        if ev.corrected is not None:
            by_id[t.id] = t.model_copy(update={"chapters": ev.corrected, "source": "feedback"})
            corrected += 1
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for t in by_id.values():
            line = t.model_dump_json()
            digest.update(line.encode())
            f.write(line + "\n")
    return digest.hexdigest()[:16], {"rows": len(by_id), "feedback_corrections": corrected}


def _content_key(paths: list[Path]) -> str:
    """Order-insensitive hash of the JSONL lines in `paths`: the same records give the same key."""
    acc = 0
    n = 0
    for line in _lines(*paths):
        acc ^= int(hashlib.sha256(line.strip().encode()).hexdigest()[:16], 16)
        n += 1
    return f"{acc:016x}-{n}"


def _chain(*iterables):
    for it in iterables:
        yield from it


def commit_stage(settings: Settings, run_dir: Path) -> dict[str, int]:
    """The run succeeded: append its transcripts and feedback to the corpus, move the watermarks."""
    from chaptering.watermarks import Watermarks

    corpus = _corpus(settings)
    counts = {}
    for name in ("curated.jsonl", "feedback.jsonl"):
        src = run_dir / name
        n = 0
        if src.exists():
            with (corpus / name).open("a", encoding="utf-8") as out:
                for line in _lines(src):
                    out.write(line.rstrip("\n") + "\n")
                    n += 1
        counts[name] = n
    Watermarks(settings.state_dir / "watermarks.json").commit_pending(run_dir / "watermarks.pending.json")
    return counts


# --- reporting -----------------------------------------------------------------------------------


def summarize(ingested: dict, curated: dict, build: BuildOutput, outcome: TrainOutcome, evals: EvalOutcome,
              decision: Decision, committed: dict) -> str:
    """The markdown a person reads first: what came in, what was rejected, what was trained, the verdict."""
    from chaptering.evaluate import full_markdown

    lines = [
        "# Nightly retrain",
        "",
        (f"- ingested: {ingested['transcripts']} new transcripts, {ingested['feedback_events']} feedback events, "
        f"{ingested['quarantined']} quarantined at ingest"),
        f"- curated: {curated['accepted']} accepted, {curated['rejected']} rejected"
        + "".join(f"; {k.split(': ', 1)[1]}: {v}" for k, v in curated.items() if k.startswith("rejected: ")),
        f"- datasets `{build.fingerprint}` ({'reused' if build.reused else 'built'}): "
        + ", ".join(f"{k} {v['rows']} rows" for k, v in build.stats.items() if isinstance(v, dict) and "rows" in v),
        f"- training: {outcome.reason}",
    ]
    for r in outcome.results:
        lines.append(f"  - {r['stage']}: {r['steps']} steps, {r['tokens_seen']} tokens, {r['seconds']} s, "
                     f"loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}" if r.get("first_loss") is not None else
                     f"  - {r['stage']}: {r['steps']} steps")
    reports = [r for r in (evals.challenger, evals.champion, *evals.references) if r is not None]
    if reports:
        lines += ["", full_markdown(reports)]
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    lines += ["", f"**Decision**: version {decision.version or '–'} {verdict}.", ""]
    lines += [f"- {r}" for r in decision.reasons]
    lines += ["", f"- committed to corpus: {committed}"]
    return "\n".join(lines) + "\n"
