"""Reading the registry back: the versions with their metrics and decisions, a version by spec
(`champion`, `models:/NAME/VERSION`, `models:/NAME@ALIAS`), its files (downloaded once and checked), and
the champion's evaluation report for the gate.

New versions keep their figures and the gate's reasons on their run (`registry_log`, `registry_aliases`);
versions registered before that kept them as version tags, and both are read, so an old registry still
lists, gates and serves.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaptering.pyfunc import _check_bundle, _check_safetensors_only
from chaptering.registry_metrics import report_from_tags, summary_from_run, summary_from_tags
from chaptering.registry_store import (
    CHAMPION,
    EDGE_EXPORT_TAG,
    EXPERIMENT,
    NO_CHAMPION,
    REPORT_ARTIFACT,
    _alias_version,
    _client,
    _get_version,
    _not_found,
    _now,
    _versions,
)

if TYPE_CHECKING:  # pragma: no cover
    from chaptering.config import Settings
    from chaptering.evaluate import Report

_RUN_BATCH = 100  # run ids per search: keeps the filter string short on every store


def find_version(settings: Settings, **tags: str) -> str | None:
    """Newest version whose tags match all of `tags` (e.g. the same dataset and training config):
    lets a nightly run with nothing new skip training."""
    for row in _versions(settings):
        if all(row.tags.get(k) == str(v) for k, v in tags.items()):
            return str(row.version)
    return None


def _runs(client: Any, run_ids: list[str]) -> dict[str, Any]:
    """The versions' runs by id, in a few searches of the `chaptering` experiment; runs elsewhere (a
    version registered from another experiment) one by one. A deleted run is simply absent."""
    from mlflow.exceptions import MlflowException

    wanted = sorted({r for r in run_ids if r})
    found: dict[str, Any] = {}
    exp = client.get_experiment_by_name(EXPERIMENT) if wanted else None
    batches = range(0, len(wanted), _RUN_BATCH) if exp is not None else range(0)
    for i in batches:
        chunk = wanted[i:i + _RUN_BATCH]
        ids = ", ".join(f"'{r}'" for r in chunk)
        for run in client.search_runs([exp.experiment_id], f"attributes.run_id IN ({ids})", max_results=len(chunk)):
            found[run.info.run_id] = run
    for run_id in (r for r in wanted if r not in found):
        try:
            found[run_id] = client.get_run(run_id)
        except MlflowException as e:
            if not _not_found(e):
                raise
    return found


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """One dict per version, newest first, for `chaptering models` and `/v1/model`: `metrics` is flat
    (`headline`, `short_f1`, `talks_pk`, pooled `unusable`), from the run or from an old version's tags."""
    client, name = _client(settings), settings.registered_model
    versions = _versions(settings)
    # Search results leave aliases out on some stores: the registered model has the full map.
    by_version: dict[str, list[str]] = {}
    if versions:
        for alias, v in (client.get_registered_model(name).aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
    runs = _runs(client, [mv.run_id for mv in versions])
    rows = []
    for mv in versions:
        aliases = set(getattr(mv, "aliases", None) or []) | set(by_version.get(str(mv.version), []))
        run = runs.get(mv.run_id or "")
        run_tags = run.data.tags if run is not None else {}
        metrics = summary_from_tags(mv.tags) or (summary_from_run(run.data.metrics) if run is not None else {})
        rows.append({
            "version": str(mv.version),
            "aliases": sorted(aliases),
            "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC).isoformat(
                timespec="seconds"),
            "decision": mv.tags.get("decision", ""),
            "decision_reasons": mv.tags.get("decision_reasons") or run_tags.get("decision_reasons", ""),
            "previous_champion": mv.tags.get("previous_champion"),
            "base_model": mv.tags.get("base_model"),
            "prompt_version": mv.tags.get("prompt_version") or run_tags.get("prompt_version"),
            "run_id": mv.run_id,
            "metrics": metrics,
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
    from chaptering.boundary_chapterer import is_bundle

    mv = _resolve_spec(spec, settings)
    name, version = mv.name, str(mv.version)
    dst = _download_once(f"models:/{name}/{version}", _version_cache(settings, name, version), settings)
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


def fetch_export(spec: str, quant: str, settings: Settings) -> Path | None:
    """The folder `chaptering export` logged for a registered version (downloaded once), if that export
    holds the title LM `quant`; else None (the caller runs the version on PyTorch instead)."""
    mv = _resolve_spec(spec, settings)
    tag = _export_tag(mv)
    if quant not in tag.get("quants", []):
        return None
    name, version = mv.name, str(mv.version)
    dst = _download_once(tag["artifact"], _version_cache(settings, name, f"{version}-edge-{'-'.join(tag['quants'])}"),
                         settings)
    manifests = sorted(dst.rglob("manifest.json"))
    if not manifests:
        raise ValueError(f"{tag['artifact']}: version {version}'s export holds no manifest.json")
    return manifests[0].parent


def export_quants(spec: str, settings: Settings) -> list[str]:
    """The title LMs of the export logged to a registered version ([] if none): one registry call, no
    download, so the service can poll it."""
    return list(_export_tag(_resolve_spec(spec, settings)).get("quants", []))


def _export_tag(mv: Any) -> dict[str, Any]:
    import json

    raw = (mv.tags or {}).get(EDGE_EXPORT_TAG)
    return json.loads(raw) if raw else {}


def _version_cache(settings: Settings, name: str, leaf: str) -> Path:
    """Where a version's files are kept: keyed by the tracking URI (version 3 of one server is not
    version 3 of another)."""
    store = hashlib.sha256(settings.tracking_uri.encode()).hexdigest()[:10]
    return settings.cache_dir / "registry" / store / name / leaf


def _download_once(uri: str, dst: Path, settings: Settings) -> Path:
    """`uri` downloaded to `dst` unless already complete there (versions and their runs' files are immutable)."""
    import mlflow

    if not (dst / ".complete").is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        # A private download folder, renamed into place when complete: concurrent fetches don't collide.
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp),
                                                tracking_uri=settings.tracking_uri,
                                                registry_uri=settings.tracking_uri)
            (tmp / ".complete").write_text(_now())
            if not (dst / ".complete").is_file():
                shutil.rmtree(dst, ignore_errors=True)
                tmp.rename(dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def champion_report(settings: Settings) -> Report | None:
    """The champion's evaluation report as logged with it (`eval/report.json` on its run); None before
    the first promotion. Versions registered without that file fall back to their old metric tags."""
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
    return report_from_tags(f"models:/{name}/{mv.version}", mv.tags)
