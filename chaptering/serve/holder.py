"""The model holder: loads the champion (or a pinned model), polls the registry, hot-swaps the live model."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaptering.serve.limits import bound_generation
from chaptering.serve.wire import public_name

if TYPE_CHECKING:  # pragma: no cover
    from chaptering.config import Settings
    from chaptering.schema import Chapterer

log = logging.getLogger("chaptering.serve")

Loader = Callable[[str, "Settings"], Any]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class LiveModel:
    """One loaded chapterer and what it is; replaced whole, never mutated."""

    chapterer: Chapterer
    version: str
    name: str
    source: str
    loaded_at: str
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class ModelUnavailable(RuntimeError):
    """No model could be loaded (the error says why)."""


class ModelHolder:
    """Holds the live model; `reload_now` follows the `champion` alias, a thread polls it."""

    def __init__(self, settings: Settings, loader: Loader, spec: str = "champion") -> None:
        self.settings, self.loader, self.spec = settings, loader, spec
        self._live: LiveModel | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registry_champion: str | None = None
        self.last_check: str | None = None
        self.last_error: str | None = None

    @property
    def follows_registry(self) -> bool:
        return self.spec == "champion"

    @property
    def live(self) -> LiveModel | None:
        return self._live

    def _failed(self, exc: Exception, what: str) -> str:
        """Log the whole error; keep only its type for /v1/model (exception text can name local paths)."""
        log.warning("%s: %s: %s", what, type(exc).__name__, exc)
        self.last_error = f"{what}: {type(exc).__name__} (details in the server log)"
        return self.last_error

    def current(self) -> LiveModel:
        """The live model, loading it first if nothing is loaded yet (an app run without lifespan)."""
        live = self._live
        if live is None:
            try:
                self.reload_now()
            except Exception as exc:
                raise ModelUnavailable(self._failed(exc, "model load failed")) from exc
            live = self._live
        if live is None:  # pragma: no cover - reload_now always loads when nothing is live
            raise ModelUnavailable(self.last_error or "no model loaded")
        return live

    def reload_now(self) -> bool:
        """Load the model the registry names if it is not the live one; True when it swapped."""
        with self._reload_lock:
            target = self._target()
            if target is None:
                return False
            spec, version, source = target
            t0 = time.perf_counter()
            chapterer = self.loader(spec, self.settings)
            bound_generation(chapterer)
            metrics, details = self._describe(version, source)
            new = LiveModel(chapterer, version, str(getattr(chapterer, "name", spec)), source, _now(),
                            metrics, details)
            old, self._live = self._live, new  # the swap: one reference assignment
            self.last_error = None
            log.info("serving %s (version %s, was %s), loaded in %.1f s", new.name, version,
                     old.version if old else None, time.perf_counter() - t0)
            return True

    def _target(self) -> tuple[str, str, str] | None:
        """(spec to load, version label, source), or None to keep the live model."""
        live = self._live
        if not self.follows_registry:
            return None if live is not None else (self.spec, self.spec, "fixed")
        from chaptering import registry

        version = registry.champion_version(self.settings)
        self.registry_champion, self.last_check = version, _now()
        if version is None:
            # No champion: serve.fallback at start-up; a vanished alias later is not a reason to downgrade.
            fallback = self.settings.serve.fallback
            return None if live is not None else (fallback, fallback, "base")
        spec = f"models:/{self.settings.registered_model}/{version}"
        if live is not None and live.version == version and not self._export_arrived(live, spec):
            self.last_error = None  # the registry answers and names what we serve: nothing is wrong
            return None
        return spec, version, "registry"

    def _export_arrived(self, live: LiveModel, spec: str) -> bool:
        """True when the live version runs on PyTorch for want of the `serve.export_quant` export and that
        export has since been logged (`chaptering export` after the promotion): it is reloaded once."""
        quant = self.settings.serve.export_quant
        if not quant or live.name.endswith(f"(edge:{quant})"):
            return False
        from chaptering import registry

        return quant in registry.export_quants(spec, self.settings)

    def _describe(self, version: str, source: str) -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics and provenance of a registered version (informational: never blocks a load)."""
        if source != "registry":
            return {}, {}
        from chaptering import registry

        try:
            row = next((r for r in registry.list_versions(self.settings) if r["version"] == version), None)
            if row is None:
                return {}, {}
            metrics = dict(row.get("metrics") or {})
            if not metrics and self.registry_champion == version:
                report = registry.champion_report(self.settings)
                if report is not None:
                    metrics = {k: float(v["mean"]) for k, v in report.aggregate.items() if "mean" in v}
            details = {k: row.get(k) for k in ("aliases", "created", "decision", "base_model",
                                               "prompt_version", "run_id", "previous_champion")}
            if isinstance(details.get("base_model"), str):
                details["base_model"] = public_name(details["base_model"])
            return metrics, details
        except Exception as exc:  # noqa: BLE001 - a metrics lookup must not stop serving
            log.warning("could not read metrics of version %s: %s", version, exc)
            return {}, {}

    # -- polling -------------------------------------------------------------------------------------

    def start_polling(self) -> None:
        if not self.follows_registry or self.settings.serve.poll_seconds <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="chaptering-champion-poller", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.serve.poll_seconds):
            try:
                self.reload_now()
            except Exception as exc:  # noqa: BLE001 - keep serving the old model, report why
                self._failed(exc, "champion reload failed, still serving the old model")


# ------------------------------------------------------------------------------- the default loader


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _default_loader(spec: str, settings: Settings) -> Any:
    """`factory.load_chapterer`, or a registered version's on-device export where `serve.export_quant`
    names one it has; a local folder given as the model must hold safetensors only (registry versions
    are checked by `registry.fetch_model`)."""
    from chaptering.factory import load_chapterer, load_exported

    quant = settings.serve.export_quant
    if quant and (spec == "champion" or spec.startswith("models:/")):
        from chaptering import registry

        folder = registry.fetch_export(spec, quant, settings)
        if folder is not None:
            return load_exported(f"export:{folder}@{quant}")
        log.warning("%s has no %s export (chaptering export VERSION --quant %s): serving it on PyTorch",
                    spec, quant, quant)
    path = Path(spec)
    if path.is_dir():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(f"{path}: refusing pickled weight files {pickles}: serve safetensors only")
    return load_chapterer(spec, settings, embedding_cache=False)
