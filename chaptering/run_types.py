"""What the nightly stages hand each other: the dataset build, the training outcome, the evaluation
and the gate's decision, as plain dataclasses (no stage logic here, so every stage module can import them)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BOUNDARY_SET = "boundary.jsonl"  # the boundary model's training transcripts inside a dataset build


def _to_dict(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(obj), default=str))


@dataclass
class BuildOutput:
    """Where the datasets are and what they are: the fingerprint keys training and caching."""

    dir: Path
    fingerprint: str
    fingerprints: dict[str, str]
    stats: dict[str, Any]
    reused: bool = False


@dataclass
class TrainOutcome:
    trained: bool
    reason: str
    adapter_dir: Path | None = None
    run_id: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalOutcome:
    challenger: Any | None  # evaluate.Report
    champion: Any | None  # on the current held-out set (re-evaluated when the set changed)
    references: list[Any] = field(default_factory=list)  # baselines + base model, when no champion yet
    plots: list[Path] = field(default_factory=list)


@dataclass
class Decision:
    promoted: bool
    version: str | None
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
