"""Run any chapterer over an eval set: per-transcript scores, bootstrap aggregates, report + plots."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from chaptering.metrics import LOWER_IS_BETTER, PRIMARY, aggregate, score
from chaptering.predict import predict_all
from chaptering.schema import Prediction, Transcript

# The columns of every table, in order: F1 first (primary), Pk never without F1 and the count error.
TABLE = [
    ("f1_k5", "F1@5"), ("f1_k1", "F1@1"), ("f1_5s", "F1@5s"), ("pk", "Pk"), ("windowdiff", "WD"),
    ("boundary_similarity", "B"), ("abs_count_error", "|Δn|"), ("title_rouge_l", "ROUGE-L"),
    ("parsed_clean", "clean"), ("unusable", "unusable"), ("start_auc", "AUC"),
]


@dataclass
class Report:
    model: str
    data: str
    data_fingerprint: str
    aggregate: dict[str, dict[str, float]]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def metric(self, key: str = PRIMARY) -> float | None:
        return self.aggregate.get(key, {}).get("mean")

    def flat_metrics(self) -> dict[str, float]:
        """`eval_<metric>` plus interval bounds: the same keys for every model, for MLflow's compare view."""
        out: dict[str, float] = {}
        for k, v in self.aggregate.items():
            out[f"eval_{k}"] = v["mean"]
            out[f"eval_{k}_lo"], out[f"eval_{k}_hi"] = v["lo"], v["hi"]
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls(**json.loads(text))


def fingerprint(transcripts: Sequence[Transcript]) -> str:
    """Content hash of an eval set: reports are comparable only when this matches."""
    h = hashlib.sha256()
    for t in transcripts:
        h.update(t.model_dump_json(exclude={"meta"}).encode())
    return h.hexdigest()[:16]


def result_key(spec: str, transcripts: Sequence[Transcript], settings: Any) -> str:
    """What fixes a fixed model's numbers (eval set, decoding, prompt, parser, seed): cached reports
    are reused only under the same key."""
    from chaptering.prompt import PARSER_VERSION, PROMPT_VERSION

    blob = json.dumps([spec, fingerprint(transcripts), settings.model.model_dump(), PROMPT_VERSION, PARSER_VERSION,
                       settings.seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate(
    chapterer: Any, transcripts: Sequence[Transcript], data_name: str = "", progress: bool = True
) -> tuple[Report, list[Prediction]]:
    """Score a chapterer on labelled transcripts; returns the report and the predictions behind it."""
    unlabelled = [t.id for t in transcripts if not t.chapters]
    if unlabelled:
        raise ValueError(f"{data_name}: evaluation needs reference chapters; missing for {unlabelled[:5]}")
    predictions = list(predict_all(chapterer, transcripts, progress=progress))
    rows = [
        {"id": t.id, **score(t, p), "generated_tokens": p.meta.get("generated_tokens"),
         "latency_s": p.meta.get("latency_s")}
        for t, p in zip(transcripts, predictions)
    ]
    agg = aggregate([{k: v for k, v in r.items() if k not in ("id", "generated_tokens", "latency_s")} for r in rows])
    report = Report(chapterer.name, data_name, fingerprint(transcripts), agg, rows)
    return report, predictions


def _cell(report: Report, key: str) -> str:
    v = report.aggregate.get(key)
    if v is None:
        return "–"
    if key in ("parsed_clean", "unusable"):
        return f"{v['mean']:.0%}"
    return f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"


def markdown_table(reports: Iterable[Report]) -> str:
    """One row per model, mean [95% CI] per metric; ↓ marks lower-is-better columns."""
    reports = list(reports)
    head = ["model"] + [f"{label}{' ↓' if key in LOWER_IS_BETTER else ''}" for key, label in TABLE]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        lines.append("| " + " | ".join([f"`{r.model}`"] + [_cell(r, k) for k, _ in TABLE]) + " |")
    return "\n".join(lines)


def report_markdown(report: Report) -> str:
    lines = [
        f"# Evaluation of `{report.model}`",
        "",
        f"Data: `{report.data}` (fingerprint `{report.data_fingerprint}`, {len(report.rows)} transcripts).",
        "",
        markdown_table([report]),
        "",
        "## Per transcript",
        "",
        "| id | F1@5 | Pk | n ref | n hyp | ROUGE-L |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        rouge = "–" if r.get("title_rouge_l") is None else f"{r['title_rouge_l']:.2f}"
        lines.append(
            f"| {r['id']} | {r['f1_k5']:.2f} | {r['pk']:.2f} | {r['n_ref']:.0f} | {r['n_hyp']:.0f} | {rouge} |"
        )
    return "\n".join(lines) + "\n"


def plot_timelines(
    transcripts: Sequence[Transcript], predictions: Sequence[Prediction], path: Path, limit: int = 12
) -> Path:
    """Reference vs predicted boundaries per transcript, on a 0..1 axis of segment position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(zip(transcripts, predictions))[:limit]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(pairs) + 1.2))
    for row, (t, p) in enumerate(pairs):
        n = len(t.segments)
        ax.vlines([b / n for b in t.boundaries], row - 0.35, row, color="tab:blue", lw=2)
        ax.vlines([b / n for b in p.boundaries], row, row + 0.35, color="tab:orange", lw=2)
    ax.set_yticks(range(len(pairs)), [t.id[:28] for t, _ in pairs], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("position in transcript (share of segments)")
    ax.set_title(f"{predictions[0].model if predictions else ''}: reference (blue, below) vs predicted (orange)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_compare(reports: Sequence[Report], path: Path, keys: Sequence[str] = ("f1_k5", "f1_k1", "pk")) -> Path:
    """Bar chart of models side by side with their 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 0.4 * len(reports) + 2))
    for ax, key in zip(np.atleast_1d(axes), keys):
        means = [r.aggregate.get(key, {}).get("mean", np.nan) for r in reports]
        lo = [m - r.aggregate.get(key, {}).get("lo", m) for m, r in zip(means, reports)]
        hi = [r.aggregate.get(key, {}).get("hi", m) - m for m, r in zip(means, reports)]
        ax.barh(range(len(reports)), means, xerr=[lo, hi], color="tab:blue", alpha=0.8)
        ax.set_yticks(range(len(reports)), [r.model[:30] for r in reports], fontsize=7)
        ax.set_title(key + (" (lower is better)" if key in LOWER_IS_BETTER else ""))
        ax.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    report: Report, predictions: Sequence[Prediction], transcripts: Sequence[Transcript], out_dir: Path
) -> dict[str, Path]:
    """report.json, report.md, predictions.jsonl and timeline.png in `out_dir`."""
    from chaptering.io import write_jsonl

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        "predictions": out_dir / "predictions.jsonl",
    }
    paths["json"].write_text(report.to_json())
    paths["markdown"].write_text(report_markdown(report))
    write_jsonl(paths["predictions"], predictions)
    paths["timeline"] = plot_timelines(transcripts, predictions, out_dir / "timeline.png")
    return paths
