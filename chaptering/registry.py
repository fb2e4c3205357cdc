"""MLflow: log a trained bundle (boundary model + title adapter) or adapter as one model, register it,
gate it, move the `champion` alias, roll back.

The serving side only ever asks for `models:/<name>@champion`, so every decision about what users see is
one alias move. This module is the one name the rest of the project imports; the work is split by job:

- `registry_store`: the connection, the experiment, the alias and version lookups;
- `registry_log`: a candidate's model, run metrics, plots and report, and its registration;
- `registry_metrics`: how evaluation figures are named as run metrics, and read back;
- `registry_aliases`: the gate's verdict on the version and its run, promotion, rollback;
- `registry_read`: listing versions, fetching a version's files, the champion's report.

What a version holds and the `PythonModel` that loads it live in `chaptering.pyfunc`. mlflow is imported
inside functions so that the CLI and the light tests start fast.
"""

from __future__ import annotations

from typing import Any

from chaptering.pyfunc import _model_class
from chaptering.registry_aliases import decide_and_promote, promote, rollback
from chaptering.registry_log import VERSION_TAGS, Candidate, git_commit, log_candidate
from chaptering.registry_metrics import run_metrics
from chaptering.registry_read import (
    champion_report,
    export_quants,
    fetch_export,
    fetch_model,
    find_version,
    list_versions,
)
from chaptering.registry_store import (
    CHALLENGER,
    CHAMPION,
    DECISION_ARTIFACT,
    EXPERIMENT,
    MODEL_NAME,
    NO_CHAMPION,
    REPORT_ARTIFACT,
    champion_version,
    configure,
)

__all__ = [
    "CHALLENGER", "CHAMPION", "DECISION_ARTIFACT", "EXPERIMENT", "MODEL_NAME", "NO_CHAMPION", "REPORT_ARTIFACT",
    "VERSION_TAGS", "Candidate", "champion_report", "champion_version", "configure", "decide_and_promote",
    "export_quants", "fetch_export", "fetch_model", "find_version", "git_commit", "list_versions", "log_candidate",
    "promote", "rollback", "run_metrics",
]


def __getattr__(name: str) -> Any:
    # Each version's models-from-code file imports the class from where it lived when it was logged;
    # versions registered before chaptering.pyfunc existed say `from chaptering.registry import
    # ChapteringModel`, so this name must keep resolving (lazily: it imports mlflow) for them to load.
    if name == "ChapteringModel":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
