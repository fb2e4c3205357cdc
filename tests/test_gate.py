"""The promotion gate on synthetic reports: paired bootstrap on the headline, no domain collapsing, a
first candidate against the best baseline."""

from __future__ import annotations

import numpy as np
from factories import scored_report

from chaptering.config import GateSettings
from chaptering.gate import best_reference, gate

G = GateSettings()


def noisy(mean: float, n: int, sd: float, seed: int) -> list[float]:
    return list(np.clip(np.random.default_rng(seed).normal(mean, sd, n), 0, 1))


def shifted(values: list[float], by: float) -> list[float]:
    return [v + by for v in values]


def test_clear_gain_in_every_domain_is_promoted_with_reasons():
    champ = {"short": noisy(0.4, 50, 0.2, 1), "talks": noisy(0.2, 40, 0.15, 2)}
    chall = {d: shifted(v, 0.06) for d, v in champ.items()}
    v = gate(scored_report("c", chall), scored_report("champ", champ), [], G)
    assert v.promote, v.reasons
    assert v.reasons[0].startswith("ok: headline 0.") and "vs champion" in v.reasons[0]
    assert "[+0.060, +0.060]" in v.reasons[0]  # every pair differs by exactly 0.06
    assert any(r.startswith("ok: talks: Pk") for r in v.reasons)


def test_ahead_on_the_mean_but_interval_includes_zero_is_refused():
    champ = {"short": noisy(0.4, 30, 0.2, 3), "talks": noisy(0.3, 30, 0.2, 4)}
    # per-transcript differences of +0.32 and -0.28 in turn: +0.02 on average, with a wide spread
    chall = {d: [x + 0.02 + (0.3 if i % 2 else -0.3) for i, x in enumerate(v)] for d, v in champ.items()}
    c, r = scored_report("c", chall), scored_report("champ", champ)
    assert c.headline["mean"] > r.headline["mean"]  # ahead on the difference of means...
    v = gate(c, r, [], G)
    assert not v.promote  # ...but the paired interval of the difference includes 0
    assert v.reasons[0].startswith("FAIL: headline") and "lower bound <= 0" in v.reasons[0]


def test_ahead_overall_but_collapsing_on_one_domain_is_refused():
    champ = {"short": noisy(0.4, 50, 0.2, 6), "talks": noisy(0.3, 40, 0.2, 7), "meetings": noisy(0.3, 35, 0.2, 8)}
    chall = {"short": shifted(champ["short"], 0.30), "talks": shifted(champ["talks"], 0.10),
             "meetings": shifted(champ["meetings"], -0.10)}
    v = gate(scored_report("c", chall), scored_report("champ", champ), [], G)
    assert v.reasons[0].startswith("ok: headline")  # the headline alone would promote it
    assert not v.promote
    assert any(r.startswith("FAIL: meetings: F1") for r in v.reasons)


def test_domain_pk_or_boundary_similarity_regression_is_refused():
    champ = {"short": noisy(0.4, 50, 0.2, 9)}
    chall = {"short": shifted(champ["short"], 0.1)}
    worse_pk = gate(scored_report("c", chall, pk=0.45), scored_report("champ", champ, pk=0.40), [], G)
    assert not worse_pk.promote and any(r.startswith("FAIL: short: Pk") for r in worse_pk.reasons)
    worse_b = gate(scored_report("c", chall, b=0.2), scored_report("champ", champ, b=0.3), [], G)
    assert not worse_b.promote and any(r.startswith("FAIL: short: B") for r in worse_b.reasons)
    worse_health = gate(scored_report("c", chall, unusable=0.2), scored_report("champ", champ), [], G)
    assert not worse_health.promote and any(r.startswith("FAIL: unusable") for r in worse_health.reasons)


def test_first_candidate_must_beat_the_best_baseline_not_only_the_base():
    truth = {"short": noisy(0.3, 50, 0.2, 10), "talks": noisy(0.1, 40, 0.1, 11)}
    base = scored_report("base", {d: shifted(v, -0.1) for d, v in truth.items()})
    equal = scored_report("baseline:equal", truth)
    embedding = scored_report("baseline:embedding", {d: shifted(v, 0.1) for d, v in truth.items()})
    chall = scored_report("c", {d: shifted(v, 0.05) for d, v in truth.items()})
    assert best_reference([base, equal, embedding], chall.data_fingerprint) is embedding
    v = gate(chall, None, [base, equal, embedding], G)
    assert not v.promote and "vs best baseline baseline:embedding" in v.reasons[0]
    assert gate(chall, None, [base, equal], G).promote  # the same candidate beats the weaker field


def test_unlike_sets_and_missing_references_are_refused():
    f1 = {"short": noisy(0.3, 20, 0.2, 12)}
    good = scored_report("c", {d: shifted(v, 0.2) for d, v in f1.items()})
    other = gate(good, scored_report("champ", f1, fp="old-set"), [], G)
    assert not other.promote and "other data" in other.reasons[0]
    assert not gate(good, None, [], G).promote
    assert not gate(good, None, [scored_report("b", f1, fp="old-set")], G).promote
    fewer = scored_report("champ", {"short": f1["short"][:10]})
    unpaired = gate(good, fewer, [], G)
    assert not unpaired.promote and "same transcripts" in unpaired.reasons[0]


def test_a_permissive_gate_promotes_anything_comparable():
    f1 = {"short": noisy(0.3, 20, 0.2, 13)}
    loose = GateSettings(min_lower_bound=-1.0, max_domain_f1_drop=1.0, max_pk_regression=1.0, max_b_regression=1.0)
    assert gate(scored_report("c", {"short": shifted(f1["short"], -0.2)}), scored_report("r", f1), [], loose).promote
