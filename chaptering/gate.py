"""The promotion gate: decides from evaluation reports alone whether a challenger may serve.

Yardstick v2 (see metrics.py): the challenger must be ahead of the reference on the headline (macro F1
over domains) by a paired bootstrap of per-transcript differences whose 95 % lower bound is above 0, a
difference of means is not enough. It must also not collapse anywhere: in no domain may its primary F1
fall more than a margin below the reference, nor its Pk rise or its Boundary Similarity fall by more
than a margin, and its unusable-output share may not grow. The reference is the champion; with no
champion yet it is the best of the baselines and the zero-shot base model on the headline, so a first
candidate has to beat what a user gets without any training. Working on reports only keeps the
gate testable without MLflow or a model (ZenML keeps promotion a step of its own for the same reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from chaptering.config import GateSettings
from chaptering.evaluate import Report
from chaptering.metrics import HEADLINE, PRIMARY, paired_headline_diff

_EPS = 1e-9  # 0.392 - 0.382 must count as a gain of 0.010


@dataclass
class Verdict:
    """The gate's answer: promote or not, and every check with its numbers (kept on the version)."""

    promote: bool
    reasons: list[str] = field(default_factory=list)


def best_reference(references: Sequence[Report], fingerprint: str) -> Report | None:
    """The reference with the highest headline among those scored on the same eval set."""
    usable = [r for r in references if r.headline and r.data_fingerprint == fingerprint]
    return max(usable, key=lambda r: r.headline["mean"], default=None)


def _domain_checks(challenger: Report, ref: Report, who: str, gs: GateSettings) -> list[tuple[bool, str]]:
    checks: list[tuple[bool, str]] = []
    for d in sorted(ref.domains):
        c_f1, r_f1 = challenger.domain_metric(d, PRIMARY), ref.domain_metric(d, PRIMARY)
        if c_f1 is None or r_f1 is None:
            checks.append((False, f"{d}: no primary F1 on one side, cannot rule out a collapse"))
            continue
        ok = c_f1 - r_f1 >= -gs.max_domain_f1_drop - _EPS
        checks.append((ok, (f"{d}: F1 {c_f1:.3f} vs {who} {r_f1:.3f} ({c_f1 - r_f1:+.3f}; "
                           f"allowed drop {gs.max_domain_f1_drop:.3f})")))
        c_pk, r_pk = challenger.domain_metric(d, "pk"), ref.domain_metric(d, "pk")
        if c_pk is not None and r_pk is not None:
            ok = c_pk - r_pk <= gs.max_pk_regression + _EPS
            checks.append((ok, (f"{d}: Pk {c_pk:.3f} vs {who} {r_pk:.3f} (lower is better; {c_pk - r_pk:+.3f}, "
                               f"allowed rise {gs.max_pk_regression:.3f})")))
        c_b, r_b = challenger.domain_metric(d, "boundary_similarity"), ref.domain_metric(d, "boundary_similarity")
        if c_b is not None and r_b is not None:
            ok = c_b - r_b >= -gs.max_b_regression - _EPS
            checks.append((ok, (f"{d}: B {c_b:.3f} vs {who} {r_b:.3f} ({c_b - r_b:+.3f}; "
                               f"allowed drop {gs.max_b_regression:.3f})")))
    return checks


def gate(
    challenger: Report, champion: Report | None, references: Sequence[Report], gs: GateSettings
) -> Verdict:
    """Promote only on evidence (module notes). `references`: baselines and the base model, read only
    when there is no champion yet."""
    if not challenger.headline or not challenger.rows:
        return Verdict(False, [("challenger report has no headline or per-transcript rows (an eval set "
                               "without domains?): cannot judge it")])
    if champion is not None:
        ref, who = champion, "champion"
    else:
        best = best_reference(references, challenger.data_fingerprint)
        if best is None:
            return Verdict(False, [("no champion and no baseline or base-model report on this eval set to "
                                   "compare against")])
        ref, who = best, f"best baseline {best.model}"
    if ref.data_fingerprint != challenger.data_fingerprint:
        return Verdict(False, [
            (f"the {who} was evaluated on other data (fingerprint {ref.data_fingerprint} vs "
            f"{challenger.data_fingerprint}): re-evaluate it on the current held-out set before comparing")])
    try:
        diff = paired_headline_diff(challenger.rows, ref.rows, n_boot=gs.n_boot, seed=gs.seed)
    except ValueError as e:
        return Verdict(False, [f"cannot pair the challenger with the {who}: {e}"])
    c_h, r_h = challenger.metric(HEADLINE), ref.metric(HEADLINE)
    ok = diff["lo"] > gs.min_lower_bound
    checks = [(ok, (f"headline {c_h:.3f} vs {who} {r_h:.3f}: {diff['mean']:+.3f} [{diff['lo']:+.3f}, "
                   f"{diff['hi']:+.3f}] (paired bootstrap; lower bound {'>' if ok else '<='} "
                   f"{gs.min_lower_bound:g})"))]
    checks += _domain_checks(challenger, ref, who, gs)
    c_un, r_un = challenger.metric("unusable"), ref.metric("unusable")
    if c_un is not None and r_un is not None:
        du = c_un - r_un
        ok = du <= gs.max_unusable_regression + _EPS
        checks.append((ok, (f"unusable share {c_un:.3f} vs {who} {r_un:.3f}: {du:+.3f} "
                           f"{'<=' if ok else '>'} allowed rise {gs.max_unusable_regression:.3f}")))
    return Verdict(all(ok for ok, _ in checks), [("ok: " if ok else "FAIL: ") + text for ok, text in checks])
