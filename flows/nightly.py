"""Prefect flows: thin tasks, each calling one function of chaptering.pipeline (or chaptering.shards).

`nightly_retrain` is the DAG ingest -> curate -> datasets -> train -> evaluate -> register -> commit
(-> export-champion, when export.on_promote names title LMs and the run promoted a version).
Curation and the challenger's evaluation fan out: subflows map a task over shards on a DaskTaskRunner
(the cluster at `scale.dask_address`, else a local one of `scale.workers` processes), then merge in
this process; a stage too small for more than one shard runs as one, without a cluster.
Nothing touches the registry before `register`, and the watermarks/corpus move only in `commit`, so
a failed stage leaves the champion and the stored data as they were and the next run retries. A run
that was killed outright (no `finally` ran) is cleaned up when the next one starts (`cleanup.recover`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from chaptering import cleanup, pipeline, shards
from chaptering.config import Settings, apply_overrides, get_settings

IO_RETRIES = {"retries": 2, "retry_delay_seconds": [5, 30], "cache_policy": NO_CACHE}


@task(name="ingest", **IO_RETRIES)
def ingest(settings: Settings, run_dir: Path, inputs: list[Path] | None, full: bool) -> dict[str, int]:
    return pipeline.ingest_stage(settings, run_dir, inputs, full)


@task(name="curate-shard", cache_policy=NO_CACHE)
def curate_shard(settings: Settings, shard: shards.Shard, out_dir: Path) -> Path:
    return shards.screen_shard(settings, shard, out_dir)


@task(name="curate-merge", cache_policy=NO_CACHE)
def curate_merge(settings: Settings, run_dir: Path, parts: list[Path]) -> dict[str, int]:
    return pipeline.curate_merge_stage(settings, run_dir, parts)


@task(name="evaluate-shard", cache_policy=NO_CACHE)
def evaluate_shard(settings: Settings, spec: str, span: tuple[int, int]) -> list[dict[str, Any]]:
    return shards.predict_range(settings, spec, *span)


@task(name="evaluate-merge", cache_policy=NO_CACHE)
def evaluate_merge(settings: Settings, outcome: pipeline.TrainOutcome, run_dir: Path,
                   parts: list[list[dict[str, Any]]]) -> pipeline.EvalOutcome:
    return shards.merge_eval(settings, outcome, run_dir, parts)


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


@task(name="export-champion", cache_policy=NO_CACHE)
def export_champion(settings: Settings, decision: pipeline.Decision) -> dict[str, Any]:
    return pipeline.export_stage(settings, decision)


def task_runner(settings: Settings, n_shards: int) -> Any:
    """Dask for a real fan-out (the configured cluster, else a local one of single-threaded worker
    processes, no dashboard port to collide on); one shard needs no cluster."""
    if n_shards <= 1:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if settings.scale.dask_address:  # its workers need PREFECT_API_URL set to the server this flow reports to
        return DaskTaskRunner(address=settings.scale.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings.scale.workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None, "env": _api_env()})


def _api_env() -> dict[str, str]:
    """The Prefect API this flow reports to, for local workers to report to the same one: under the
    ephemeral API (`chaptering retrain` without a server) each worker would otherwise start a temporary
    server of its own on the same SQLite file, and they lock each other out."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return {"PREFECT_API_URL": url}
    ephemeral = SubprocessASGIServer()  # the one this process started, if any (it is a singleton)
    return {"PREFECT_API_URL": ephemeral.api_url} if ephemeral.running else {}


@flow(name="curate-fanout")
def curate_fanout(settings: Settings, run_dir: Path, plan: list[shards.Shard]) -> dict[str, int]:
    """Screen every shard on the task runner's workers, then deduplicate them in order here."""
    out_dir = run_dir / "shards"
    parts = curate_shard.map(unmapped(settings), plan, unmapped(out_dir))
    return curate_merge(settings, run_dir, parts.result())


@flow(name="evaluate-fanout")
def evaluate_fanout(settings: Settings, outcome: pipeline.TrainOutcome, run_dir: Path,
                    spans: list[tuple[int, int]]) -> pipeline.EvalOutcome:
    """Score the held-out set's ranges on the workers, then build the report here."""
    parts = evaluate_shard.map(unmapped(settings), unmapped(str(outcome.adapter_dir)), spans)
    return evaluate_merge(settings, outcome, run_dir, parts.result())


def curate_stage(settings: Settings, run_dir: Path) -> dict[str, int]:
    plan = shards.plan_curation(settings, run_dir)
    return curate_fanout.with_options(task_runner=task_runner(settings, len(plan)))(settings, run_dir, plan)


def evaluate_stage(settings: Settings, outcome: pipeline.TrainOutcome, run_dir: Path) -> pipeline.EvalOutcome:
    if not outcome.trained:
        return evaluate(settings, outcome, run_dir)  # the champion's report only: nothing to fan out
    spans = shards.plan_eval(settings)
    return evaluate_fanout.with_options(task_runner=task_runner(settings, len(spans)))(settings, outcome, run_dir,
                                                                                       spans)


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
    curated = curate_stage(settings, run_dir)
    build = build_datasets(settings, run_dir, wait_for=[curated])
    outcome = train(settings, build, run_dir, force)
    evals = evaluate_stage(settings, outcome, run_dir)
    decision = register(settings, outcome, evals, build)
    committed = commit(settings, run_dir, wait_for=[decision])
    exported = export_champion(settings, decision, wait_for=[committed])
    summary = pipeline.summarize(ingested, curated, build, outcome, evals, decision, committed)
    create_markdown_artifact(key="nightly-summary", markdown=summary, description="nightly retrain summary")
    (run_dir / "summary.md").write_text(summary)
    logger.info("version %s %s: %s", decision.version or "-", "promoted" if decision.promoted else "not promoted",
                "; ".join(decision.reasons))
    if exported.get("error"):
        logger.warning("champion %s not exported (served on PyTorch): %s", decision.version, exported["error"])
    return {"run_dir": str(run_dir), "trained": outcome.trained, "decision": decision.to_dict(),
            "export": exported}


if __name__ == "__main__":
    nightly_retrain()
