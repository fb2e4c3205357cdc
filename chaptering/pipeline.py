"""The nightly stages as plain functions over files, so the CLI and the Prefect flow share them.

Layout under state/:
  corpus/curated.jsonl      every transcript accepted so far (cumulative, deduplicated)
  corpus/feedback.jsonl     every feedback event accepted so far, with its transcript
  datasets/<key>/           sft/, dpo/, kto/, val/, stats.json, build.json (one per distinct input)
  runs/<run>/               ingested/curated files of this run, quarantine.jsonl, train/, eval/, summary.md
A run writes only into its own folder until `commit_stage`, which appends to the corpus and moves the
watermarks: a failed run changes nothing that the next run depends on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaptering.config import Settings
from chaptering.io import Rejected


def _to_dict(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(obj), default=str))


@dataclass
class BuildOutput:
    """Where the datasets are and what they are: the fingerprint keys training and caching."""

    dir: Path
    fingerprint: str
    fingerprints: dict[str, str]
    stats: dict[str, Any]
    reused: bool = False


@dataclass
class TrainOutcome:
    trained: bool
    reason: str
    adapter_dir: Path | None = None
    run_id: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalOutcome:
    challenger: Any | None  # evaluate.Report
    champion: Any | None  # on the current held-out set (re-evaluated when the set changed)
    references: list[Any] = field(default_factory=list)  # baselines + base model, when no champion yet
    plots: list[Path] = field(default_factory=list)


@dataclass
class Decision:
    promoted: bool
    version: str | None
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        rejected=rejected, known=known))
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
    knobs = json.dumps([settings.augment.model_dump(), settings.model.model_dump(), settings.data.val_fraction,
                        settings.seed, PROMPT_VERSION, TITLE_PROMPT_VERSION], sort_keys=True, default=str)
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


BOUNDARY_SET = "boundary.jsonl"


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
    from chaptering.ingest import Watermarks

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


# --- model ---------------------------------------------------------------------------------------


def train_config_hash(settings: Settings) -> str:
    blob = json.dumps([settings.train.model_dump(), settings.model.base, settings.model.kind,
                       settings.boundary.model_dump() if settings.model.kind == "boundary" else None],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train_stage(settings: Settings, build: BuildOutput, run_dir: Path, force: bool = False) -> TrainOutcome:
    """SFT on the build, then DPO/KTO when users gave feedback. Skips when this exact data and config
    already produced a registered version (a no-op night costs seconds, not a training run)."""
    import mlflow

    from chaptering import registry
    from chaptering.datasets import load_rows
    from chaptering.models import resolve_base
    from chaptering.train import choose_backend, train_preference, train_sft

    cfg_hash = train_config_hash(settings)
    registry.configure(settings)
    if not force:
        existing = registry.find_version(settings, dataset_fingerprint=build.fingerprint, train_config=cfg_hash)
        if existing is not None:
            return TrainOutcome(False, f"version {existing} was already trained on dataset {build.fingerprint} "
                                       f"with this config; nothing new to learn (use force to retrain)")
    boundary_kind = settings.model.kind == "boundary"
    sft = load_rows(build.dir / ("titles" if boundary_kind else "sft"))
    if sft is None or len(sft) == 0:
        return TrainOutcome(False, "the SFT dataset is empty: no labelled transcripts yet")
    backend = choose_backend(settings.train.backend)
    base = resolve_base(settings.model.base, settings.cache_dir)
    out = run_dir / "train"
    with mlflow.start_run(run_name=f"train-{run_dir.name}") as run:
        mlflow.log_params({**{f"train.{k}": v for k, v in settings.train.model_dump().items()},
                           "base_model": settings.model.base, "backend": backend, "kind": settings.model.kind,
                           "dataset_fingerprint": build.fingerprint, "train_config": cfg_hash,
                           **{f"dataset.{k}": v for k, v in build.fingerprints.items()},
                           **({f"boundary.{k}": v for k, v in settings.boundary.model_dump().items()}
                              if boundary_kind else {})})
        boundary_model = fit_boundary(settings, build) if boundary_kind else None
        budget = settings.train.max_steps * settings.train.batch_size * settings.train.grad_accum
        results = [train_sft(sft, base, out / "sft", settings.train, backend, max_samples=budget)]
        adapter = results[-1].adapter_dir
        if boundary_kind:  # titles learn from retitled chapters; moved boundaries went to the trees
            dpo, kto = load_rows(build.dir / "titles_dpo"), None
            has_feedback_pairs = dpo is not None and len(dpo) > 0
        else:
            dpo, kto = load_rows(build.dir / "dpo"), load_rows(build.dir / "kto")
            has_feedback_pairs = build.stats.get("feedback_dpo_rows", 0) > 0
        if dpo is not None and has_feedback_pairs and settings.train.dpo_steps > 0:
            results.append(train_preference(dpo, "dpo", base, adapter, out / "dpo", settings.train, backend))
            adapter = results[-1].adapter_dir
        if kto is not None and len(kto) > 0 and settings.train.dpo_steps > 0:
            results.append(train_preference(kto, "kto", base, adapter, out / "kto", settings.train, backend))
            adapter = results[-1].adapter_dir
        metrics = {f"{r.stage}_{k}": float(v) for r in results
                   for k, v in (("seconds", r.seconds), ("tokens_seen", r.tokens_seen), ("steps", r.steps),
                                ("final_loss", r.last_loss)) if v is not None}
        how = "trained " + " + ".join(r.stage for r in results)
        if boundary_model is not None:
            from chaptering.boundary_chapterer import write_bundle

            card = boundary_model.card
            metrics.update({"boundary_val_primary_f1": card["val_primary_f1"], "boundary_rounds": card["rounds"],
                            "boundary_seconds": card["seconds"], "boundary_threshold": boundary_model.decoder.threshold})
            mlflow.log_dict(card, "boundary/card.json")
            how = (f"boundary model: {card['rounds']} trees on {card['train_lines']} lines of "
                   f"{card['train_transcripts']} transcripts, threshold {boundary_model.decoder.threshold:.2f} "
                   f"(val F1 {card['val_primary_f1']:.3f}); titles: {how}")
            adapter = write_bundle(out / "bundle", boundary_model, adapter)
        else:
            decoding = _calibrate(settings, base, adapter, build)
            metrics.update({f"calibration_{k}": float(v) for k, v in decoding.items()})
            if decoding:
                how += f"; start threshold {decoding['start_threshold']:.2f} fitted on {decoding['val_windows']} val windows"
        mlflow.log_metrics(metrics)
        return TrainOutcome(True, how, adapter, run.info.run_id, [r.to_dict() for r in results])


def fit_boundary(settings: Settings, build: BuildOutput) -> Any:
    """The boundary model on the build's boundary set (curated transcripts + user corrections)."""
    from chaptering import boundary
    from chaptering.decode import DecoderSettings
    from chaptering.io import read_transcripts

    b = settings.boundary
    decoder = DecoderSettings(min_gap_s=b.min_gap_s, min_gap_lines=b.min_gap_lines, min_chapters=b.min_chapters,
                              max_chapters=b.max_chapters)
    return boundary.fit(read_transcripts(build.dir / BOUNDARY_SET), cache_dir=settings.cache_dir, rounds=b.rounds,
                        val_share=b.val_share, decoder=decoder)


def _calibrate(settings: Settings, base: str, adapter: Path, build: BuildOutput) -> dict[str, Any]:
    """The decoding threshold for this adapter, fitted on the val split (calibrate.py)."""
    from chaptering.calibrate import calibrate
    from chaptering.datasets import load_rows
    from chaptering.models import load_model

    model, tok = load_model(base, adapter=adapter, dtype=settings.model.dtype)
    return calibrate(adapter, model, tok, load_rows(build.dir / "val"), seed=settings.seed)


def reference_report(spec: str, settings: Settings) -> Any:
    """A fixed model (a baseline, the zero-shot base, a registered version) on the held-out set, cached
    per (model, eval set, prompt, decoding, and for baselines the chapter count they aim for)."""
    from chaptering.evaluate import Report, evaluate, result_key
    from chaptering.factory import load_chapterer, train_mean_chapters
    from chaptering.heldout import load_heldout

    transcripts = load_heldout(settings.data.eval_path)
    aim = f"@{train_mean_chapters(settings):.3f}" if spec.startswith("baseline:") else ""
    key = result_key(spec + aim, transcripts, settings)
    path = settings.cache_dir / "eval" / f"{spec.replace(':', '-').replace('/', '_')}-{key}.json"
    if path.is_file():
        return Report.from_json(path.read_text())
    report, _ = evaluate(load_chapterer(spec, settings), transcripts, data_name=str(settings.data.eval_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json())
    return report


def base_report(settings: Settings) -> Any:
    """The zero-shot base model on the held-out set (cached; what a user gets without training)."""
    return reference_report("base", settings)


def champion_on_heldout(settings: Settings) -> Any:
    """The champion's report on the current held-out set: the one it was promoted on when the set is
    unchanged, else a fresh evaluation of the champion (cached per version), so a new held-out set
    does not leave every later challenger incomparable."""
    from chaptering import registry
    from chaptering.evaluate import fingerprint
    from chaptering.heldout import load_heldout

    report = registry.champion_report(settings)
    if report is None or report.data_fingerprint == fingerprint(load_heldout(settings.data.eval_path)):
        return report
    version = registry.champion_version(settings)
    return reference_report(f"models:/{settings.registered_model}/{version}", settings)


def evaluate_stage(settings: Settings, outcome: TrainOutcome, run_dir: Path) -> EvalOutcome:
    """Challenger on the held-out set, beside the champion's report; with no champion, beside the
    baselines (and the zero-shot base model when `gate.compare_base`): what a first candidate must beat."""
    from chaptering.evaluate import evaluate, write_report
    from chaptering.factory import load_chapterer
    from chaptering.heldout import load_heldout

    if not outcome.trained:
        return EvalOutcome(None, champion_on_heldout(settings))
    transcripts = load_heldout(settings.data.eval_path)
    chapterer = load_chapterer(str(outcome.adapter_dir), settings)
    chapterer.name = f"challenger:{run_dir.name}"
    report, predictions = evaluate(chapterer, transcripts, data_name=str(settings.data.eval_path))
    paths = write_report(report, predictions, transcripts, run_dir / "eval")
    champion = champion_on_heldout(settings)
    specs = [f"baseline:{b}" for b in settings.gate.baselines] + (["base"] if settings.gate.compare_base else [])
    references = [] if champion else [reference_report(spec, settings) for spec in specs]
    return EvalOutcome(report, champion, references, [paths["timeline"], paths["markdown"], paths["json"]])


def register_stage(settings: Settings, outcome: TrainOutcome, evals: EvalOutcome, build: BuildOutput) -> Decision:
    """Log + register the challenger, run the gate, move `champion` only if it passes."""
    from chaptering import registry
    from chaptering.gate import gate
    from chaptering.models import EMBEDDED

    if not outcome.trained or evals.challenger is None:
        return Decision(False, None, [outcome.reason])
    version = registry.log_candidate(
        outcome.adapter_dir, settings.model.base if settings.model.base != EMBEDDED else EMBEDDED,
        evals.challenger,
        params={},
        tags={"dataset_fingerprint": build.fingerprint, "train_config": train_config_hash(settings),
              **{f"dataset.{k}": v for k, v in build.fingerprints.items()}},
        plots=evals.plots, settings=settings, run_id=outcome.run_id,
    )
    verdict = gate(evals.challenger, evals.champion, evals.references, settings.gate)
    registry.decide_and_promote(version.version, verdict, settings)
    return Decision(verdict.promote, str(version.version), verdict.reasons)


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
