"""Run any chapterer over an eval set: per-transcript scores, bootstrap aggregates, report + plots."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

from chaptering.metrics import (
    HEADLINE,
    LOWER_IS_BETTER,
    PRIMARY,
    aggregate,
    by_domain,
    domain_of,
    headline,
    score,
)
from chaptering.predict import predict_all
from chaptering.schema import Chapterer, Prediction, Transcript

# The columns of every per-domain table, in order: the primary F1 first, Pk never without F1 and the
# count error. F1@5 is 5 lines (turns in a meeting); F1@5s / F1@3s are time tolerances.
TABLE = [
    ("f1", "F1"), ("f1_3s", "F1@3s"), ("f1_k5", "F1@5 lines"), ("pk", "Pk"), ("windowdiff", "WD"),
    ("boundary_similarity", "B"), ("abs_count_error", "\\|Δn\\|"), ("title_rouge_l", "ROUGE-L"),
    ("parsed_clean", "clean"), ("unusable", "unusable"), ("start_auc", "AUC"),
]
# Per-domain figures logged to MLflow (run metrics and version tags) and read by the gate.
DOMAIN_METRICS = ("f1", "f1_3s", "f1_k5", "pk", "windowdiff", "boundary_similarity", "abs_count_error",
                  "title_rouge_l", "unusable")
_NOT_METRICS = ("id", "domain", "generated_tokens", "latency_s")


@dataclass
class Report:
    """One model on one eval set: pooled aggregates, per-domain aggregates and the headline.

    `domains` and `headline` are empty in reports written before yardstick v2 (their eval set had no
    domains); the gate refuses to compare such a report with a v2 one (the fingerprints differ anyway).
    """

    model: str
    data: str
    data_fingerprint: str
    aggregate: dict[str, dict[str, float]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    domains: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)

    def metric(self, key: str = PRIMARY) -> float | None:
        if key == HEADLINE:
            return self.headline.get("mean")
        return self.aggregate.get(key, {}).get("mean")

    def domain_metric(self, domain: str, key: str = PRIMARY) -> float | None:
        return self.domains.get(domain, {}).get(key, {}).get("mean")

    def flat_metrics(self) -> dict[str, float]:
        """`eval_headline`, `eval_<domain>_<metric>` and pooled `eval_<metric>`, each with interval bounds:
        the same keys for every model, for MLflow's compare view."""
        out: dict[str, float] = {}
        if self.headline:
            out["eval_headline"] = self.headline["mean"]
            out["eval_headline_lo"], out["eval_headline_hi"] = self.headline["lo"], self.headline["hi"]
        for d, agg in self.domains.items():
            for k in DOMAIN_METRICS:
                if k in agg:
                    out[f"eval_{d}_{k}"] = agg[k]["mean"]
                    out[f"eval_{d}_{k}_lo"], out[f"eval_{d}_{k}_hi"] = agg[k]["lo"], agg[k]["hi"]
        for k, v in self.aggregate.items():
            out[f"eval_{k}"] = v["mean"]
            out[f"eval_{k}_lo"], out[f"eval_{k}_hi"] = v["lo"], v["hi"]
        return out

    def summary_metrics(self) -> dict[str, float]:
        """The few figures a person compares versions on: the headline and each domain's F1, Pk and B."""
        keep = {"eval_headline", "eval_headline_lo", "eval_headline_hi", "eval_unusable"}
        keep |= {f"eval_{d}_{k}" for d in self.domains for k in ("f1", "pk", "boundary_similarity")}
        return {k: v for k, v in self.flat_metrics().items() if k in keep}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls(**json.loads(text))


def fingerprint(transcripts: Sequence[Transcript]) -> str:
    """Content hash of an eval set, domains included: reports are comparable only when this matches."""
    h = hashlib.sha256()
    for t in transcripts:
        h.update(t.model_dump_json(exclude={"meta"}).encode())
        if "domain" in t.meta:
            h.update(f"domain={t.meta['domain']}".encode())
    return h.hexdigest()[:16]


def result_key(spec: str, transcripts: Sequence[Transcript], settings: Any) -> str:
    """What fixes a fixed model's numbers (eval set, decoding, prompt, parser, seed): cached reports
    are reused only under the same key."""
    from chaptering.prompt import PARSER_VERSION, PROMPT_VERSION

    blob = json.dumps([spec, fingerprint(transcripts), settings.model.model_dump(exclude={"device"}), PROMPT_VERSION,
                       PARSER_VERSION, settings.seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate(
    chapterer: Chapterer, transcripts: Sequence[Transcript], data_name: str = "", progress: bool = True,
    checkpoint: Path | None = None,
) -> tuple[Report, list[Prediction]]:
    """Score a chapterer on labelled transcripts; returns the report and the predictions behind it.

    With `checkpoint` (a folder owned by this model + eval set + settings, e.g. named by `result_key`),
    each prediction is kept there as it is made and reused on the next call: an LLM row takes hours
    on a CPU, and an interrupted run resumes instead of starting over."""
    unlabelled = [t.id for t in transcripts if not t.chapters]
    if unlabelled:
        raise ValueError(f"{data_name}: evaluation needs reference chapters; missing for {unlabelled[:5]}")
    predictions = _predict_resumable(chapterer, transcripts, checkpoint, progress)
    rows = [
        {"id": t.id, "domain": domain_of(t), **score(t, p), "generated_tokens": p.meta.get("generated_tokens"),
         "latency_s": p.meta.get("latency_s")}
        for t, p in zip(transcripts, predictions)
    ]
    return report_from_rows(chapterer.name, data_name, fingerprint(transcripts), rows), predictions


def _checkpoint_file(folder: Path, transcript_id: str) -> Path:
    return folder / (hashlib.sha256(transcript_id.encode()).hexdigest()[:24] + ".json")


def checkpointed(folder: Path, transcript_id: str) -> bool:
    """Whether `evaluate(checkpoint=folder)` already holds this transcript's prediction (so work left
    can be split by what is left, not by what the set holds)."""
    return _checkpoint_file(folder, transcript_id).is_file()


def _predict_resumable(chapterer: Chapterer, transcripts: Sequence[Transcript], checkpoint: Path | None,
                       progress: bool) -> list[Prediction]:
    if checkpoint is None:
        return list(predict_all(chapterer, transcripts, progress=progress))
    checkpoint.mkdir(parents=True, exist_ok=True)
    done: dict[str, Prediction] = {}
    for t in transcripts:
        path = _checkpoint_file(checkpoint, t.id)
        if path.is_file():
            done[t.id] = Prediction.model_validate_json(path.read_text())
    for p in predict_all(chapterer, [t for t in transcripts if t.id not in done], progress=progress):
        path = _checkpoint_file(checkpoint, p.id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(p.model_dump_json())
        tmp.replace(path)  # whole files only: a run killed mid-write leaves no half prediction
        done[p.id] = p
    return [done[t.id] for t in transcripts]


def report_from_rows(model: str, data_name: str, data_fingerprint: str, rows: list[dict[str, Any]]) -> Report:
    """Pooled, per-domain and headline aggregates of per-transcript score rows."""

    def metrics_only(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in _NOT_METRICS} for r in rs]

    domains = {d: aggregate(metrics_only(rs)) for d, rs in by_domain(rows).items()}
    return Report(model, data_name, data_fingerprint, aggregate(metrics_only(rows)), rows, domains, headline(rows))


DOMAIN_ORDER = ("short", "talks", "lectures", "meetings", "work")


def domain_names(reports: Iterable[Report]) -> list[str]:
    """Domains present in any report, the held-out set's order first."""
    seen = list(dict.fromkeys(d for r in reports for d in r.domains))
    return [d for d in DOMAIN_ORDER if d in seen] + sorted(d for d in seen if d not in DOMAIN_ORDER)


def _fmt(v: dict[str, float] | None, key: str = "") -> str:
    if not v:
        return "–"
    if key in ("parsed_clean", "unusable"):
        return f"{v['mean']:.0%}"
    return f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"


def _primary_label(reports: list[Report], domain: str) -> str:
    timed = any("f1_5s" in r.domains.get(domain, {}) for r in reports)
    return f"{domain} (F1@5s)" if timed else f"{domain} (F1@5 turns)"


def markdown_table(reports: Iterable[Report]) -> str:
    """The headline table: one row per model, the macro F1 [95% CI] first, then each domain's primary F1."""
    reports = list(reports)
    domains = domain_names(reports)
    head = ["model", "headline (macro F1)"] + [_primary_label(reports, d) for d in domains]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        cells = [f"`{r.model}`", _fmt(r.headline)] + [_fmt(r.domains.get(d, {}).get(PRIMARY)) for d in domains]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def domain_table(reports: Iterable[Report], domain: str) -> str:
    """Every metric of one domain, one row per model; ↓ marks lower-is-better columns."""
    head = ["model"] + [f"{label}{' ↓' if key in LOWER_IS_BETTER else ''}" for key, label in TABLE]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        agg = r.domains.get(domain, {})
        lines.append("| " + " | ".join([f"`{r.model}`"] + [_fmt(agg.get(k), k) for k, _ in TABLE]) + " |")
    return "\n".join(lines)


def full_markdown(reports: Iterable[Report]) -> str:
    """The headline table, then one table per domain with every metric: what `evaluate` prints."""
    reports = list(reports)
    parts = [markdown_table(reports)]
    for d in domain_names(reports):
        n = max((int(r.domains[d].get(PRIMARY, {}).get("n", 0)) for r in reports if d in r.domains), default=0)
        parts += ["", f"**{d}** ({n} transcripts)", "", domain_table(reports, d)]
    return "\n".join(parts)


def report_markdown(report: Report) -> str:
    lines = [
        f"# Evaluation of `{report.model}`",
        "",
        f"Data: `{report.data}` (fingerprint `{report.data_fingerprint}`, {len(report.rows)} transcripts).",
        "",
        full_markdown([report]),
        "",
        "## Per transcript",
        "",
        "| id | domain | F1 | F1@5 lines | Pk | n ref | n hyp | ROUGE-L |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        rouge = "–" if r.get("title_rouge_l") is None else f"{r['title_rouge_l']:.2f}"
        lines.append(
            f"| {r['id']} | {r.get('domain', '')} | {r[PRIMARY]:.2f} | {r['f1_k5']:.2f} | {r['pk']:.2f} "
            f"| {r['n_ref']:.0f} | {r['n_hyp']:.0f} | {rouge} |"
        )
    return "\n".join(lines) + "\n"


def plot_timelines(
    transcripts: Sequence[Transcript], predictions: Sequence[Prediction], path: Path, limit: int = 12
) -> Path:
    """Reference vs predicted boundaries per transcript, on a 0..1 axis of segment position; the
    transcripts are taken round-robin over domains so every domain shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[Transcript, Prediction]]] = {}
    for t, p in zip(transcripts, predictions):
        groups.setdefault(domain_of(t), []).append((t, p))
    pairs = [pair for rank in zip_longest(*groups.values()) for pair in rank if pair is not None][:limit]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(pairs) + 1.2))
    for row, (t, p) in enumerate(pairs):
        n = len(t.segments)
        ax.vlines([b / n for b in t.boundaries], row - 0.35, row, color="tab:blue", lw=2)
        ax.vlines([b / n for b in p.boundaries], row, row + 0.35, color="tab:orange", lw=2)
    ax.set_yticks(range(len(pairs)), [f"{domain_of(t)}: {t.id[:24]}" for t, _ in pairs], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("position in transcript (share of segments)")
    ax.set_title(f"{predictions[0].model if predictions else ''}: reference (blue, below) vs predicted (orange)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_compare(reports: Sequence[Report], path: Path) -> Path:
    """Bar chart of models side by side with their 95% intervals: the headline, then each domain's F1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [HEADLINE] + domain_names(reports)

    def cell(r: Report, key: str) -> dict[str, float]:
        return r.headline if key == HEADLINE else r.domains.get(key, {}).get(PRIMARY, {})

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 0.4 * len(reports) + 2), sharey=True)
    for ax, key in zip(np.atleast_1d(axes), keys):
        means = [cell(r, key).get("mean", np.nan) for r in reports]
        lo = [m - cell(r, key).get("lo", m) for m, r in zip(means, reports)]
        hi = [cell(r, key).get("hi", m) - m for m, r in zip(means, reports)]
        ax.barh(range(len(reports)), means, xerr=[lo, hi], color="tab:blue", alpha=0.8)
        ax.set_yticks(range(len(reports)), [r.model[:30] for r in reports], fontsize=7)
        ax.set_title("headline (macro F1)" if key == HEADLINE else f"{key}: F1")
        ax.set_xlim(0, 1)
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
