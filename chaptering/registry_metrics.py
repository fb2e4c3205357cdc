"""How evaluation figures are named in MLflow, both ways: a `Report` -> run metrics that MLflow's compare
view lines up per domain, and a run's metrics (or, for old versions, a version's tags) -> the flat
`{domain}_{metric}` dict that `chaptering models` and `/v1/model` show.

Run metrics are `<metric>/<domain>` (`f1/short`, `pk/meetings`, `boundary_similarity/talks`): MLflow
groups charts by the part before the slash, so one section holds a metric across domains. `f1` is the
primary F1 the gate judges (F1@5s where the domain has times, F1@5 lines where not); `<metric>/pooled` is
pooled over every transcript; `headline` is the macro F1 over domains. Only the headline and each
domain's primary F1 carry their 95 % bounds (`headline_lo`, `f1_lo/short`): the full intervals live in
the run's `eval/report.json`. Versions registered before this naming kept `metric.eval_*` version tags;
they are still read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from chaptering.evaluate import Report

POOLED = "pooled"  # not "all": that is the domain of an eval set without domains
HEADLINE_KEYS = ("headline", "headline_lo", "headline_hi")


def run_metrics(report: Report) -> dict[str, float]:
    """The report's figures as run metrics (module notes); the same keys for every model on one eval set."""
    from chaptering.evaluate import DOMAIN_METRICS  # here: the registry imports stay light

    # Per domain: the gate's figures, the other tolerances, what users see (count error, titles, failures).
    per_domain = (*DOMAIN_METRICS, "f1_5s")
    out: dict[str, float] = {}
    if report.headline:
        out.update(headline=report.headline["mean"], headline_lo=report.headline["lo"],
                   headline_hi=report.headline["hi"])
    for d, agg in report.domains.items():
        for k in per_domain:
            if k in agg:
                out[f"{k}/{d}"] = agg[k]["mean"]
        if "f1" in agg:
            out[f"f1_lo/{d}"], out[f"f1_hi/{d}"] = agg["f1"]["lo"], agg["f1"]["hi"]
    for k in (*per_domain, "parsed_clean"):
        if k in report.aggregate:
            out[f"{k}/{POOLED}"] = report.aggregate[k]["mean"]
    return out


def summary_from_run(metrics: dict[str, float]) -> dict[str, float]:
    """Run metrics -> `headline`, `{domain}_{metric}`, `{domain}_f1_lo` and pooled `{metric}` (old shape)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key in HEADLINE_KEYS:
            out[key] = float(value)
        elif "/" in key:
            metric, domain = key.split("/", 1)
            if domain == POOLED:
                out[metric] = float(value)
            elif metric in ("f1_lo", "f1_hi"):
                out[f"{domain}_f1_{metric[3:]}"] = float(value)
            else:
                out[f"{domain}_{metric}"] = float(value)
    return out


def summary_from_tags(tags: dict[str, str]) -> dict[str, float]:
    """Versions registered before run metrics: `metric.eval_short_f1` -> `short_f1`."""
    out = {}
    for k, v in tags.items():
        if k.startswith("metric."):
            try:
                out[k[len("metric."):].removeprefix("eval_")] = float(v)
            except ValueError:
                continue
    return out


def report_from_tags(model: str, tags: dict[str, str]) -> Report | None:
    """The pooled means and intervals an old version kept as `metric.eval_*` tags, as a Report (None if none)."""
    from chaptering.evaluate import Report

    flat = {k[len("metric.eval_"):]: float(v) for k, v in tags.items() if k.startswith("metric.eval_")}
    agg = {k: {"mean": v, "lo": flat.get(f"{k}_lo", v), "hi": flat.get(f"{k}_hi", v)}
           for k, v in flat.items() if not k.endswith(("_lo", "_hi"))}
    if not agg:
        return None
    return Report(model, tags.get("eval_data", ""), tags.get("eval_fingerprint", ""), agg)
