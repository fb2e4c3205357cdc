"""The connection to the MLflow store: pointing MLflow at it, the registry's names, and the lookups that
turn MLflow's "not found" errors into None or a LookupError that names what is missing.

Every other `registry_*` module starts here, so the tracking URI, the experiment and the aliases are
decided in one place. mlflow is imported inside functions so that the CLI and the light tests start fast.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from chaptering.config import Settings

EXPERIMENT = "chaptering"
CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_NAME = "model"  # the logged model's name inside its run
REPORT_ARTIFACT = "eval/report.json"
DECISION_ARTIFACT = "decision.md"  # at the run's root, beside the plots: Compare lists root files
EDGE_EXPORT_TAG = "edge_export"  # a version's on-device export: {"artifact", "quants", "bytes", "created"}
NO_CHAMPION = "no champion yet: run `chaptering retrain` first"
_TAG_LIMIT = 5000  # MLflow's model-version tag values are bounded; keep under the strictest store's limit


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def configure(settings: Settings) -> str:
    """Point MLflow at the settings' store and select the `chaptering` experiment; returns its id.

    On a local store the experiment gets an explicit artifact location in the state folder, or MLflow
    would write ./mlruns under whatever the current directory is. A tracking server decides artifact
    locations itself (`--serve-artifacts` gives `mlflow-artifacts:/`), so none is imposed there.
    """
    import mlflow

    client = _client(settings)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        location = None
        if not _is_remote(settings.tracking_uri):
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _tag_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return s[:_TAG_LIMIT]


def _alias_version(client: Any, name: str, alias: str) -> Any | None:
    """The version holding `alias`, or None when no version does."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if _not_found(e):
            return None
        raise


def _get_version(client: Any, name: str, version: str) -> Any:
    """The version, or a LookupError naming the model and version."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as e:
        if _not_found(e):
            raise LookupError(f"model {name!r} has no version {version}") from e
        raise


def _versions(settings: Settings) -> list[Any]:
    """All versions, newest first (by number: creation times can tie)."""
    client = _client(settings)
    name = settings.registered_model.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda mv: int(mv.version), reverse=True)


def champion_version(settings: Settings) -> str | None:
    """The version the server should be running, or None before the first promotion."""
    mv = _alias_version(_client(settings), settings.registered_model, CHAMPION)
    return None if mv is None else str(mv.version)
