"""The nightly model stages: train (boundary model + title adapter, or the LLM chapterer), evaluate on
the held-out set beside the champion or the baselines, register and gate. Plain functions over files, as
in pipeline.py, which re-exports them for the flow."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from chaptering.config import Settings
from chaptering.run_types import BOUNDARY_SET, BuildOutput, Decision, EvalOutcome, TrainOutcome


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
                            "boundary_seconds": card["seconds"]})
            metrics.update({f"boundary_{k}": v for k, v in boundary_model.decoder.bars().items()})
            mlflow.log_dict(card, "boundary/card.json")
            how = (f"boundary model: {card['rounds']} trees on {card['train_lines']} lines of "
                   f"{card['train_transcripts']} transcripts, {boundary_model.decoder.describe()} "
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
                        val_share=b.val_share, decoder=decoder, windows=b.windows,
                        bag=b.bag)


def _calibrate(settings: Settings, base: str, adapter: Path, build: BuildOutput) -> dict[str, Any]:
    """The decoding threshold for this adapter, fitted on the val split (calibrate.py)."""
    from chaptering.calibrate import calibrate
    from chaptering.datasets import load_rows
    from chaptering.models import load_model

    model, tok = load_model(base, adapter=adapter, dtype=settings.model.dtype, device=settings.model.device)
    return calibrate(adapter, model, tok, load_rows(build.dir / "val"), seed=settings.seed)


def reference_report(spec: str, settings: Settings, checkpoint: Path | None = None) -> Any:
    """A fixed model (a baseline, the zero-shot base, a registered version) on the held-out set, cached
    per (model, eval set, prompt, decoding, and for baselines the chapter count they aim for). Its
    predictions are kept as they are made (in `checkpoint`, by default beside the cache entry), so an
    interrupted run resumes; the folder goes once the report is stored."""
    from chaptering.evaluate import Report, evaluate, result_key
    from chaptering.factory import load_chapterer, train_mean_chapters
    from chaptering.heldout import load_heldout

    transcripts = load_heldout(settings.data.eval_path)
    aim = f"@{train_mean_chapters(settings):.3f}" if spec.startswith("baseline:") else ""
    key = result_key(spec + aim, transcripts, settings)
    path = settings.cache_dir / "eval" / f"{spec.replace(':', '-').replace('/', '_')}-{key}.json"
    if path.is_file():
        return Report.from_json(path.read_text())
    partial = checkpoint or path.with_suffix(".partial")
    report, _ = evaluate(load_chapterer(spec, settings), transcripts, data_name=str(settings.data.eval_path),
                         checkpoint=partial)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json())
    shutil.rmtree(partial, ignore_errors=True)
    return report


def base_report(settings: Settings, checkpoint: Path | None = None) -> Any:
    """The zero-shot base model on the held-out set (cached; what a user gets without training)."""
    return reference_report("base", settings, checkpoint)


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


def export_stage(settings: Settings, decision: Decision) -> dict[str, Any]:
    """A newly promoted champion exported to `settings.export.on_promote` and logged to its version, so a
    service with serve.export_quant switches to it. Best effort: the champion is already promoted and is
    served on PyTorch without its export, so a failed export is returned (the flow logs it), never raised."""
    import tempfile

    quants = list(settings.export.on_promote)
    if not decision.promoted or decision.version is None or not quants:
        return {"exported": False}
    try:
        from chaptering.edge.manifest import total_bytes
        from chaptering.export import export_model

        with tempfile.TemporaryDirectory(prefix="export-", dir=settings.state_dir) as tmp:
            manifest = export_model(decision.version, Path(tmp) / "edge", quants, settings, log=True)
        return {"exported": True, "version": decision.version, "quants": quants, "bytes": total_bytes(manifest)}
    except Exception as exc:  # noqa: BLE001 - the promotion stands; the service runs it on PyTorch
        return {"exported": False, "version": decision.version, "error": f"{type(exc).__name__}: {exc}"}
