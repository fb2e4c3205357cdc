"""MLflow: log a trained bundle (boundary model + title adapter) or adapter as one model, register it,
gate it, move the `champion` alias, roll back.

The serving side only ever asks for `models:/<name>@champion`, so every decision about what users see is
one alias move here, recorded as tags on the version it concerns (who, why, when, what it replaced).

Bundles and adapters are logged through `mlflow.pyfunc` (a `PythonModel` with the folder as an artifact
and the base model as a reference), never `mlflow.transformers`: on a PeftModel the latter loses every base
weight on reload (measured when this project started). What a version holds and the `PythonModel` that loads it
live in `chaptering.pyfunc`; this module is the MLflow I/O around them. mlflow is imported inside
functions so that the CLI and the light tests start fast.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaptering.config import PROJECT_ROOT
from chaptering.pyfunc import (
    _MODEL_CODE,
    _check_bundle,
    _check_safetensors_only,
    _model_class,
    _pip_requirements,
    _stage_model,
    signature,
)

if TYPE_CHECKING:  # pragma: no cover
    from chaptering.config import Settings
    from chaptering.evaluate import Report
    from chaptering.gate import Verdict

EXPERIMENT = "chaptering"
CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_NAME = "model"  # the logged model's name inside its run
REPORT_ARTIFACT = "eval/report.json"
NO_CHAMPION = "no champion yet: run `chaptering retrain` first"
_TAG_LIMIT = 5000  # MLflow's model-version tag values are bounded; keep under the strictest store's limit


# --- setup ---------------------------------------------------------------------------------------


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def configure(settings: Settings) -> str:
    """Point MLflow at the settings' store and select the `chaptering` experiment; returns its id.

    On a local store the experiment gets an explicit artifact location in the state folder, or MLflow
    would write ./mlruns under whatever the current directory is. A tracking server decides artifact
    locations itself (`--serve-artifacts` gives `mlflow-artifacts:/`), so none is imposed there.
    """
    import mlflow
    from mlflow import MlflowClient

    uri = settings.tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        location = None
        if not _is_remote(uri):
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
            location = settings.artifact_root.resolve().as_uri()
        exp_id = client.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":  # someone deleted it in the UI: bring it back, keep history
            client.restore_experiment(exp_id)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _client(settings: Settings) -> Any:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _not_found(err: Exception) -> bool:
    codes = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")
    return getattr(err, "error_code", "") in codes


# --- the logged model ----------------------------------------------------------------------------


def __getattr__(name: str) -> Any:
    # Each version's models-from-code file imports the class from where it lived when it was logged;
    # versions registered before chaptering.pyfunc existed say `from chaptering.registry import
    # ChapteringModel`, so this name must keep resolving (lazily: it imports mlflow) for them to load.
    if name == "ChapteringModel":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- logging a candidate -------------------------------------------------------------------------


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


def _tag_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return s[:_TAG_LIMIT]


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
    """Log the bundle or adapter (`adapter_dir`) as a pyfunc model in the training run (or a new run), register it, tag the version
    with everything needed to reproduce and compare it, and give it the `challenger` alias.

    `champion` is not touched here: that is `decide_and_promote`'s job, after the gate.
    """
    import mlflow

    from chaptering.prompt import PROMPT_VERSION

    configure(settings)
    client = _client(settings)
    metrics = report.flat_metrics() if report is not None else {}
    # Version tags carry the few figures a person compares versions on (headline, per-domain F1/Pk/B);
    # every metric, per domain and pooled, is a run metric for MLflow's compare view.
    summary = report.summary_metrics() if report is not None else {}
    version_tags: dict[str, str] = {
        "base_model": base_model,
        "prompt_version": PROMPT_VERSION,
        "git_commit": git_commit(),
        **{k: _tag_value(v) for k, v in tags.items()},
        **{f"metric.{k}": repr(float(v)) for k, v in summary.items()},
    }
    if report is not None:
        version_tags.update(eval_data=_tag_value(report.data), eval_fingerprint=report.data_fingerprint)

    with tempfile.TemporaryDirectory(prefix="chaptering-adapter-") as tmp, _run(run_id) as run:
        staged, kind = _stage_model(adapter_dir, base_model, settings.cache_dir, Path(tmp))
        # Params are immutable in MLflow: a reused training run may already hold some of these.
        existing = client.get_run(run.info.run_id).data.params
        new_params = {k: _tag_value(v)[:6000] for k, v in params.items() if k not in existing}
        if new_params:
            mlflow.log_params(new_params)
        mlflow.set_tags({k: v for k, v in version_tags.items() if not k.startswith("metric.")})
        if metrics:
            mlflow.log_metrics(metrics)
        for plot in plots:
            if Path(plot).is_file():
                mlflow.log_artifact(str(plot), artifact_path="eval")
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


def find_version(settings: Settings, **tags: str) -> str | None:
    """Newest version whose tags match all of `tags` (e.g. the same dataset and training config):
    lets a nightly run with nothing new skip training."""
    for row in _versions(settings):
        if all(row.tags.get(k) == str(v) for k, v in tags.items()):
            return str(row.version)
    return None


# --- aliases -------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _alias_version(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if _not_found(e):
            return None
        raise


def _get_version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as e:
        if _not_found(e):
            raise LookupError(f"model {name!r} has no version {version}") from e
        raise


def champion_version(settings: Settings) -> str | None:
    """The version the server should be running, or None before the first promotion."""
    mv = _alias_version(_client(settings), settings.registered_model, CHAMPION)
    return None if mv is None else str(mv.version)


def decide_and_promote(version: str, decision: Verdict, settings: Settings) -> None:
    """Record the verdict on the version; only on `promote`, remember the outgoing champion on the new
    version (what `rollback` returns to) and move the alias. A refusal leaves `champion` untouched."""
    client, name, version = _client(settings), settings.registered_model, str(version)
    _get_version(client, name, version)

    def tag(key: str, value: Any) -> None:
        client.set_model_version_tag(name, version, key, _tag_value(value))

    tag("decision", "promoted" if decision.promote else "rejected")
    tag("decision_reasons", "\n".join(decision.reasons))
    tag("decided_at", _now())
    if not decision.promote:
        return
    current = _alias_version(client, name, CHAMPION)
    if current is not None and str(current.version) != version:
        tag("previous_champion", str(current.version))
    client.set_registered_model_alias(name, CHAMPION, version)


def promote(version: str, settings: Settings, reason: str = "manual") -> None:
    """Make VERSION the champion regardless of the gate; the reason is kept on the version."""
    from chaptering.gate import Verdict

    decide_and_promote(str(version), Verdict(True, [reason]), settings)


def rollback(settings: Settings) -> str:
    """Move `champion` back to the version it replaced (the `previous_champion` tag); returns it."""
    client, name = _client(settings), settings.registered_model
    current = _alias_version(client, name, CHAMPION)
    if current is None:
        raise LookupError(NO_CHAMPION)
    previous = current.tags.get("previous_champion")
    if not previous:
        raise LookupError(
            f"version {current.version} (the champion) records no previous champion to roll back to"
        )
    _get_version(client, name, previous)  # fail clearly if it was deleted
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, str(current.version), "decision", "rolled_back")
    client.set_model_version_tag(name, str(current.version), "rolled_back_at", _now())
    return str(previous)


# --- reading the registry ------------------------------------------------------------------------


def _versions(settings: Settings) -> list[Any]:
    """All versions, newest first (by number: creation times can tie)."""
    client = _client(settings)
    name = settings.registered_model.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda mv: int(mv.version), reverse=True)


def _metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    """`metric.eval_f1_k5` -> `f1_k5`: the metrics a version was gated on, readable without the run."""
    out = {}
    for k, v in tags.items():
        if k.startswith("metric."):
            key = k[len("metric."):]
            try:
                out[key.removeprefix("eval_")] = float(v)
            except ValueError:
                continue
    return out


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """One dict per version, newest first, for `chaptering models`."""
    client, name = _client(settings), settings.registered_model
    versions = _versions(settings)
    # Search results leave aliases out on some stores: the registered model has the full map.
    by_version: dict[str, list[str]] = {}
    if versions:
        for alias, v in (client.get_registered_model(name).aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
    rows = []
    for mv in versions:
        aliases = set(getattr(mv, "aliases", None) or []) | set(by_version.get(str(mv.version), []))
        rows.append({
            "version": str(mv.version),
            "aliases": sorted(aliases),
            "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC).isoformat(
                timespec="seconds"),
            "decision": mv.tags.get("decision", ""),
            "decision_reasons": mv.tags.get("decision_reasons", ""),
            "previous_champion": mv.tags.get("previous_champion"),
            "base_model": mv.tags.get("base_model"),
            "prompt_version": mv.tags.get("prompt_version"),
            "run_id": mv.run_id,
            "metrics": _metrics_from_tags(mv.tags),
        })
    return rows


def _resolve_spec(spec: str, settings: Settings) -> Any:
    """`champion` | `models:/NAME/VERSION` | `models:/NAME/latest` | `models:/NAME@ALIAS` -> ModelVersion."""
    client = _client(settings)
    if spec == CHAMPION:
        name, alias, version = settings.registered_model, CHAMPION, None
    elif spec.startswith("models:/"):
        rest = spec[len("models:/"):].strip("/")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            version = None
        elif "/" in rest:
            name, version = rest.rsplit("/", 1)
            alias = None
        else:
            raise ValueError(f"{spec!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    else:
        raise ValueError(f"{spec!r}: expected champion, models:/NAME/VERSION or models:/NAME@ALIAS")
    if alias is not None:
        mv = _alias_version(client, name, alias)
        if mv is None:
            raise LookupError(
                NO_CHAMPION if alias == CHAMPION else f"model {name!r} has no version with alias {alias!r}"
            )
        return mv
    if version == "latest":
        found = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda mv: int(mv.version))
        if not found:
            raise LookupError(f"model {name!r} has no versions")
        return found[-1]
    return _get_version(client, name, version)


def _artifact_in(model_dir: Path) -> Path:
    """Where pyfunc put the `bundle` (or, for LLM-only versions, `adapter`) artifact in a downloaded model."""
    from mlflow.models import Model

    conf = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {})
    artifacts = conf.get("artifacts") or {}
    entry = artifacts.get("bundle") or artifacts.get("adapter")
    if entry is None:
        raise ValueError(f"{model_dir}: this version has no `bundle` or `adapter` artifact (not a chaptering model?)")
    return model_dir / entry["path"]


def fetch_model(spec: str, settings: Settings) -> tuple[Path, str, str]:
    """Download a registered version (once: versions are immutable) -> (bundle or adapter dir, base model,
    name). The cache key includes the tracking URI: version 3 of one server is not version 3 of another.
    """
    import mlflow

    from chaptering.boundary_chapterer import is_bundle

    mv = _resolve_spec(spec, settings)
    name, version = mv.name, str(mv.version)
    store = hashlib.sha256(settings.tracking_uri.encode()).hexdigest()[:10]
    dst = settings.cache_dir / "registry" / store / name / version
    if not (dst / ".complete").is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        # A private download folder, renamed into place when complete: concurrent fetches don't collide.
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=dst.parent))
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp),
                tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri,
            )
            (tmp / ".complete").write_text(_now())
            if not (dst / ".complete").is_file():
                shutil.rmtree(dst, ignore_errors=True)
                tmp.rename(dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    path = _artifact_in(dst)
    if is_bundle(path):
        _check_bundle(path)
    else:
        _check_safetensors_only(path)
    base = mv.tags.get("base_model")
    if not base:
        from mlflow.models import Model

        base = (Model.load(str(dst / "MLmodel")).metadata or {}).get("base_model", settings.model.base)
    return path, str(base), f"models:/{name}/{version}"


def champion_report(settings: Settings) -> Report | None:
    """The champion's evaluation report as logged with it; None before the first promotion.

    Falls back to the metric tags (means and intervals) for versions registered without report.json.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from chaptering.evaluate import Report

    client, name = _client(settings), settings.registered_model
    mv = _alias_version(client, name, CHAMPION)
    if mv is None:
        return None
    if mv.run_id:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=REPORT_ARTIFACT,
                                                           dst_path=tmp, tracking_uri=settings.tracking_uri)
                return Report.from_json(Path(path).read_text())
        except (MlflowException, OSError):
            pass
    flat = {k[len("metric.eval_"):]: float(v) for k, v in mv.tags.items() if k.startswith("metric.eval_")}
    agg = {k: {"mean": v, "lo": flat.get(f"{k}_lo", v), "hi": flat.get(f"{k}_hi", v)}
           for k, v in flat.items() if not k.endswith(("_lo", "_hi"))}
    if not agg:
        return None
    return Report(f"models:/{name}/{mv.version}", mv.tags.get("eval_data", ""),
                  mv.tags.get("eval_fingerprint", ""), agg)
