"""`chaptering export`: a registered chapterer (or a local bundle) -> a folder chaptering.edge runs without
PyTorch (GGUF title LM, ONNX sentence encoder, LightGBM trees, manifest), logged back to MLflow.

Export needs the training stack (torch, transformers, peft to merge the adapter; torch.onnx for the
encoder); the folder it writes needs only the edge extra. A registered version's export is logged as an
artifact of the run that logged the version (`edge/<quants>/`) and noted in a version tag, so the registry
records which on-device files belong to which model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaptering.export.folder import export_bundle
from chaptering.registry_store import EDGE_EXPORT_TAG as VERSION_TAG

ARTIFACT_DIR = "edge"

__all__ = ["VERSION_TAG", "export_bundle", "export_model", "resolve_spec"]


def resolve_spec(spec: str, settings: Any) -> str:
    """`3` -> `models:/<registered model>/3`; champion, models:/... and folders pass through."""
    if spec.isdigit():
        return f"models:/{settings.registered_model}/{spec}"
    return spec


def export_model(spec: str, out: Path, quants: Sequence[str], settings: Any, log: bool = True,
                 encoder: str = "fp32") -> dict[str, Any]:
    """Export VERSION | champion | models:/NAME/VER | a bundle folder to `out`; returns the manifest.

    Registry versions are logged back (artifact + tag) unless `log` is False; a local folder has no
    version to log to.
    """
    from chaptering.boundary_chapterer import is_bundle

    spec = resolve_spec(spec, settings)
    path = Path(spec)
    if not (spec == "champion" or spec.startswith("models:/")):
        if not is_bundle(path):
            raise ValueError(f"{spec!r}: expected a version number, champion, models:/NAME/VERSION or a bundle "
                             "folder (boundary/ + adapter/)")
        return export_bundle(path, settings.model.base, out, quants, settings.cache_dir, encoder=encoder)
    from chaptering.registry import fetch_model, git_commit

    bundle, base, name = fetch_model(spec, settings)
    if not is_bundle(bundle):
        raise ValueError(f"{name} is an LLM-only version (an adapter, no boundary model): only bundles export")
    model_name, version = name[len("models:/"):].rsplit("/", 1)
    client = _client(settings)
    run_id = client.get_model_version(model_name, version).run_id
    manifest = export_bundle(bundle, base, out, quants, settings.cache_dir, source={
        "model": name, "registered_model": model_name, "version": version, "run_id": run_id,
        "export_git_commit": git_commit()}, encoder=encoder)
    if log and run_id:
        log_export(client, model_name, version, run_id, Path(out), manifest)
    return manifest


def _client(settings: Any) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def log_export(client: Any, model_name: str, version: str, run_id: str, folder: Path,
               manifest: dict[str, Any]) -> str:
    """Upload the folder under the version's run (`edge/<quants>`) and tag the version with where it is."""
    quants = list((manifest.get("llm") or {}).get("files", {})) or ["trees"]
    path = f"{ARTIFACT_DIR}/{'-'.join(quants)}"
    client.log_artifacts(run_id, str(folder), artifact_path=path)
    from chaptering.edge.manifest import total_bytes

    client.set_model_version_tag(model_name, version, VERSION_TAG, json.dumps(
        {"artifact": f"runs:/{run_id}/{path}", "quants": quants, "bytes": total_bytes(manifest),
         "created": manifest["created"]}))
    return path
