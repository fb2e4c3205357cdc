"""Prefect flows: thin tasks, each calling one function of chaptering.pipeline.

`nightly_retrain` is the DAG ingest -> curate -> datasets -> train -> evaluate -> register -> commit.
Nothing touches the registry before `register`, and the watermarks/corpus move only in `commit`, so
a failed stage leaves the champion and the stored data as they were and the next run retries. A run
that was killed outright (no `finally` ran) is cleaned up when the next one starts (`cleanup.recover`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from chaptering import cleanup, pipeline
from chaptering.config import Settings, apply_overrides, get_settings

IO_RETRIES = {"retries": 2, "retry_delay_seconds": [5, 30], "cache_policy": NO_CACHE}


@task(name="ingest", **IO_RETRIES)
def ingest(settings: Settings, run_dir: Path, inputs: list[Path] | None, full: bool) -> dict[str, int]:
    return pipeline.ingest_stage(settings, run_dir, inputs, full)


@task(name="curate", cache_policy=NO_CACHE)
def curate(settings: Settings, run_dir: Path) -> dict[str, int]:
    return pipeline.curate_stage(settings, run_dir)


@task(name="build-datasets", cache_policy=NO_CACHE)
def build_datasets(settings: Settings, run_dir: Path) -> pipeline.BuildOutput:
    return pipeline.dataset_stage(settings, run_dir)


@task(name="train", cache_policy=NO_CACHE)
def train(settings: Settings, build: pipeline.BuildOutput, run_dir: Path, force: bool) -> pipeline.TrainOutcome:
    return pipeline.train_stage(settings, build, run_dir, force)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(settings: Settings, outcome: pipeline.TrainOutcome, run_dir: Path) -> pipeline.EvalOutcome:
    return pipeline.evaluate_stage(settings, outcome, run_dir)


@task(name="register", **IO_RETRIES)
def register(settings: Settings, outcome: pipeline.TrainOutcome, evals: pipeline.EvalOutcome,
             build: pipeline.BuildOutput) -> pipeline.Decision:
    return pipeline.register_stage(settings, outcome, evals, build)


@task(name="commit", **IO_RETRIES)
def commit(settings: Settings, run_dir: Path) -> dict[str, int]:
    return pipeline.commit_stage(settings, run_dir)


def recover(settings: Settings) -> cleanup.CleanupReport:
    """Debris of a killed retrain: its run folder marked, its MLflow run FAILED, its orphaned Prefect
    server stopped. Never fatal: the new run does not depend on the old one's debris."""
    from prefect.settings import get_current_settings

    try:
        return cleanup.recover(settings, Path(get_current_settings().home))
    except Exception as exc:  # noqa: BLE001 - a cleanup problem must not cost the night's training
        get_run_logger().warning("cleanup after killed runs failed: %s: %s", type(exc).__name__, exc)
        return cleanup.CleanupReport(notes=[f"cleanup failed: {exc}"])


@flow(name="nightly-retrain")
def nightly_retrain(
    base_model: str | None = None,
    max_steps: int | None = None,
    force: bool = False,
    inputs: list[str] | None = None,
    full_rescan: bool = False,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Retrain on whatever is new since the last run; promote the result only if it beats the champion."""
    logger = get_run_logger()
    settings = get_settings()
    extra = list(overrides or [])
    if base_model:
        extra.append(f"model.base={base_model}")
    if max_steps:
        extra.append(f"train.max_steps={max_steps}")
    settings = apply_overrides(settings, extra).prepare() if extra else settings.prepare()
    recovered = recover(settings)
    if recovered:
        logger.warning("cleaned up after a killed run: %s", recovered.to_dict())
    run_dir = pipeline.new_run_dir(settings)
    logger.info("run folder %s", run_dir)

    ingested = ingest(settings, run_dir, [Path(p) for p in inputs] if inputs else None, full_rescan)
    curated = curate(settings, run_dir, wait_for=[ingested])
    build = build_datasets(settings, run_dir, wait_for=[curated])
    outcome = train(settings, build, run_dir, force)
    evals = evaluate(settings, outcome, run_dir)
    decision = register(settings, outcome, evals, build)
    committed = commit(settings, run_dir, wait_for=[decision])
    summary = pipeline.summarize(ingested, curated, build, outcome, evals, decision, committed)
    create_markdown_artifact(key="nightly-summary", markdown=summary, description="nightly retrain summary")
    (run_dir / "summary.md").write_text(summary)
    logger.info("version %s %s: %s", decision.version or "-", "promoted" if decision.promoted else "not promoted",
                "; ".join(decision.reasons))
    return {"run_dir": str(run_dir), "trained": outcome.trained, "decision": decision.to_dict()}


if __name__ == "__main__":
    nightly_retrain()
