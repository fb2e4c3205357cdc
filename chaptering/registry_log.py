"""Logging a candidate: the bundle or adapter as a pyfunc model in its run, its evaluation as run metrics
and artifacts, and its registration as a new version with the `challenger` alias.

What goes where is chosen for MLflow's UI: every figure is a run metric (`registry_metrics` names them),
so Compare lines candidates up per domain; the report, plots and provenance live on the run (plots at
its root, where Compare's artifact view shows two runs' files side by side); the version
keeps only the few tags a person scans the versions table for and the code reads back (`VERSION_TAGS`).

Bundles and adapters are logged through `mlflow.pyfunc` (a `PythonModel` with the folder as an artifact
and the base model as a reference), never `mlflow.transformers`: on a PeftModel the latter loses every base
weight on reload (measured when this project started). What a version holds and the `PythonModel` that
loads it live in `chaptering.pyfunc`.
"""

from __future__ import annotations

import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaptering.config import PROJECT_ROOT
from chaptering.pyfunc import _MODEL_CODE, _pip_requirements, _stage_model, signature
from chaptering.registry_metrics import run_metrics
from chaptering.registry_store import CHALLENGER, MODEL_NAME, REPORT_ARTIFACT, _client, _tag_value, configure

if TYPE_CHECKING:  # pragma: no cover
    from chaptering.config import Settings
    from chaptering.evaluate import Report

# Caller tags that also go on the version: `find_version` matches on them (a night with nothing new
# skips training) and they say what a version was trained on. Every caller tag goes on the run.
VERSION_TAGS = ("dataset_fingerprint", "train_config")
_IMAGES = {".png", ".jpg", ".jpeg", ".svg", ".gif"}


def git_commit() -> str:
    """The code version behind a model, best effort: "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


@dataclass
class Candidate:
    """What `log_candidate` registered: enough to gate it, promote it, or find it in the UI."""

    name: str
    version: str
    run_id: str
    model_uri: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@contextmanager
def _run(run_id: str | None) -> Iterator[Any]:
    """The training run if given (resumed after it ended), the caller's active run, or a new one."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id):
        yield active
        return
    with mlflow.start_run(run_id=run_id, nested=active is not None) as run:
        yield run


def log_candidate(
    adapter_dir: Path,
    base_model: str,
    report: Report | None,
    params: dict[str, Any],
    tags: dict[str, Any],
    plots: list[Path],
    settings: Settings,
    run_id: str | None = None,
) -> Candidate:
    """Log the bundle or adapter (`adapter_dir`) as a pyfunc model in the training run (or a new run) with
    its evaluation, register it with a few readable tags, and give it the `challenger` alias.

    `champion` is not touched here: that is `decide_and_promote`'s job, after the gate.
    """
    import mlflow

    from chaptering.prompt import PROMPT_VERSION

    configure(settings)
    client = _client(settings)
    run_tags: dict[str, str] = {"base_model": base_model, "prompt_version": PROMPT_VERSION,
                                "git_commit": git_commit(), **{k: _tag_value(v) for k, v in tags.items()}}
    version_tags = {k: run_tags[k] for k in ("base_model", *VERSION_TAGS) if k in run_tags}
    if report is not None:
        run_tags.update(eval_data=_tag_value(report.data), eval_fingerprint=report.data_fingerprint)
        version_tags["eval_fingerprint"] = report.data_fingerprint

    with tempfile.TemporaryDirectory(prefix="chaptering-adapter-") as tmp, _run(run_id) as run:
        staged, kind = _stage_model(adapter_dir, base_model, settings.cache_dir, Path(tmp))
        # Params are immutable in MLflow: a reused training run may already hold some of these.
        existing = client.get_run(run.info.run_id).data.params
        new_params = {k: _tag_value(v)[:6000] for k, v in params.items() if k not in existing}
        if new_params:
            mlflow.log_params(new_params)
        mlflow.set_tags(run_tags)
        if report is not None:
            mlflow.log_metrics(run_metrics(report))
        for plot in map(Path, plots):
            if plot.is_file():  # images at the run's root: Compare shows root files side by side
                mlflow.log_artifact(str(plot), artifact_path=None if plot.suffix in _IMAGES else "eval")
        if report is not None:  # after the plots: this copy is the one champion_report reads back
            mlflow.log_text(report.to_json(), REPORT_ARTIFACT)
        with warnings.catch_warnings():
            # No input example on purpose: MLflow would load the base model at log time to run it.
            warnings.filterwarnings("ignore", message=".*input example.*")
            info = _log_model(staged, kind, base_model, settings)
        mv = mlflow.register_model(info.model_uri, settings.registered_model, tags=version_tags)
    version = str(mv.version)
    client.set_registered_model_alias(settings.registered_model, CHALLENGER, version)
    return Candidate(settings.registered_model, version, run.info.run_id, info.model_uri)


def _log_model(staged: Path, kind: str, base_model: str, settings: Settings) -> Any:
    """Log the staged bundle or adapter (`kind`) as a pyfunc model in the active run, from code rather than a pickle."""
    import mlflow

    from chaptering.prompt import PROMPT_VERSION

    code = staged.parent / "chaptering_model.py"
    code.write_text(_MODEL_CODE)
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=str(code),
        artifacts={kind: str(staged)},
        model_config={
            "base_model": base_model,
            "prompt_version": PROMPT_VERSION,
            "context_tokens": settings.model.context_tokens,
            "max_new_tokens": settings.model.max_new_tokens,
            "repetition_penalty": settings.model.repetition_penalty,
            "decoding": settings.model.decoding,
            "start_threshold": settings.model.start_threshold,
            "dtype": settings.model.dtype,
        },
        metadata={"base_model": base_model, "prompt_version": PROMPT_VERSION},
        signature=signature(),
        pip_requirements=_pip_requirements(),
    )
