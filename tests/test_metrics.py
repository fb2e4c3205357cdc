"""Metrics: hand-computed cases, cross-checks against nltk/segeval, properties evaluation relies on."""

from __future__ import annotations

import itertools
import random

import pytest

from chaptering import metrics as M
from chaptering.schema import Chapter, PredictedChapter, Prediction, Segment, Transcript

# --- boundary P/R/F1 ---------------------------------------------------------------------------------


def test_boundary_prf_hand_computed():
    ref, hyp = [0, 10, 20, 30], [0, 11, 24, 31]
    # 0 dropped: R={10,20,30}, H={11,24,31}
    # k=0: no pair equal -> P=R=F=0
    assert M.boundary_prf(ref, hyp, 0) == (0.0, 0.0, 0.0)
    # k=1: 10-11, 30-31 match (24 is 4 from 20) -> P=2/3, R=2/3, F=2/3
    assert M.boundary_prf(ref, hyp, 1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # k=5: all three -> 1
    assert M.boundary_prf(ref, hyp, 5) == (1.0, 1.0, 1.0)


def test_boundary_prf_one_to_one():
    # two predictions near one reference boundary: only one may claim it -> P=1/2, R=1/1, F=2*.5*1/1.5=2/3
    assert M.boundary_prf([0, 10], [0, 9, 11], 1) == pytest.approx((0.5, 1.0, 2 / 3))


def test_boundary_prf_optimal_not_nearest_greedy():
    # greedy-by-distance could take 12-11 first (distance 1) and strand 10 and 13 -> 1 match;
    # the optimal matching is 10-11, 12-13 -> 2 matches, F=1
    assert M.boundary_prf([0, 10, 12], [0, 11, 13], 1) == (1.0, 1.0, 1.0)


def test_boundary_prf_degenerate_conventions():
    assert M.boundary_prf([0], [0], 1) == (1.0, 1.0, 1.0)  # both single-chapter
    assert M.boundary_prf([0], [0, 5], 1) == (0.0, 1.0, 0.0)  # ref empty, hyp not
    assert M.boundary_prf([0, 5, 9], [0], 5) == (0.0, 0.0, 0.0)  # single-chapter guess: F1 = 0
    assert M.boundary_prf([], [], 3) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("k", [0, 1, 2, 5, 100])
def test_boundary_prf_identity(k):
    b = [0, 3, 7, 8, 20]
    assert M.boundary_prf(b, b, k) == (1.0, 1.0, 1.0)


def _brute(ref, hyp, tol):
    """Exhaustive best matching: (pairs, -distance), for checking the DP."""
    best = (0, 0.0)
    for r in range(min(len(ref), len(hyp)) + 1):
        for rs in itertools.combinations(range(len(ref)), r):
            for hs in itertools.permutations(range(len(hyp)), r):
                d = [abs(ref[i] - hyp[j]) for i, j in zip(rs, hs)]
                if all(x <= tol for x in d):
                    best = max(best, (r, -sum(d)))
    return best


def test_match_is_optimal_against_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        ref = sorted(rng.sample(range(30), rng.randint(0, 5)))
        hyp = sorted(rng.sample(range(30), rng.randint(0, 5)))
        tol = rng.choice([0, 1, 2, 4])
        pairs = M.match(ref, hyp, tol)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        got = (len(pairs), -sum(abs(ref[i] - hyp[j]) for i, j in pairs))
        assert got == _brute(ref, hyp, tol)


def test_boundary_prf_time_hand_computed():
    ref, hyp = [0.0, 60.0, 120.0], [0.5, 62.9, 125.0]
    # first starts dropped; tol 3: |60-62.9|=2.9 ok, |120-125|=5 no -> P=R=F=1/2
    assert M.boundary_prf_time(ref, hyp, 3.0) == pytest.approx((0.5, 0.5, 0.5))
    # tol 5 is inclusive: both match -> 1
    assert M.boundary_prf_time(ref, hyp, 5.0) == (1.0, 1.0, 1.0)
    assert M.boundary_prf_time([0.0, 60.0], [0.0], 5.0)[2] == 0.0
    assert M.boundary_prf_time([1.0], [2.0], 5.0) == (1.0, 1.0, 1.0)


# --- Pk / WindowDiff ---------------------------------------------------------------------------------


def test_pk_windowdiff_hand_computed():
    # n=10 -> 9 gaps; ref boundary 5 -> gap 4, hyp boundary 6 -> gap 5; k=2 -> windows i=0..7 (8 = n-k)
    # ref window {i,i+1} holds gap 4 at i=3,4; hyp holds gap 5 at i=4,5 -> disagree at i=3,5 -> 2/8
    assert M.pk([0, 5], [0, 6], 10, 2) == pytest.approx(0.25)
    assert M.windowdiff([0, 5], [0, 6], 10, 2) == pytest.approx(0.25)
    # hyp [0,5,6] -> gaps 4,5. Pk: hyp has a boundary at i=3,4,5, ref at 3,4 -> 1/8.
    # WindowDiff counts: ref i=3:1,4:1; hyp i=3:1,4:2,5:1 -> differ at i=4,5 -> 2/8
    assert M.pk([0, 5], [0, 5, 6], 10, 2) == pytest.approx(1 / 8)
    assert M.windowdiff([0, 5], [0, 5, 6], 10, 2) == pytest.approx(2 / 8)


def test_default_k():
    # 40 segments, 4 chapters -> mean length 10 -> k = 5
    assert M.default_k([0, 10, 20, 30], 40) == 5
    assert M.default_k([0], 1) == 1  # at least 1
    # default k is used when none is given
    ref, hyp = [0, 10, 20, 30], [0, 12, 20]
    assert M.pk(ref, hyp, 40) == M.pk(ref, hyp, 40, 5)


def test_single_chapter_prediction_penalised():
    ref, n = [0, 5], 10
    # ref has a boundary in window i=3,4 (of 8), hyp never -> 2/8
    assert M.pk(ref, [0], n, 2) == pytest.approx(0.25)
    assert M.windowdiff(ref, [0], n, 2) == pytest.approx(0.25)
    assert M.pk(ref, [0], n) > 0  # default k too
    assert M.boundary_prf(ref, [0], 1)[2] == 0.0


def test_window_metrics_small_n():
    # k clamped to n-1 = 2 gaps: one window spanning everything
    assert M.pk([0, 1], [0, 2], 3, 10) == 0.0  # both have some boundary
    assert M.windowdiff([0, 1], [0, 2], 3, 10) == 0.0  # one each
    assert M.pk([0, 1], [0], 3, 10) == 1.0
    assert M.windowdiff([0, 1], [0, 1, 2], 3, 10) == 1.0
    assert M.pk([0], [0], 1) == M.windowdiff([0], [0], 1) == 0.0  # nothing can be wrong
    with pytest.raises(ValueError):
        M.pk([0, 5], [0], 10, 0)


def _random_seg(rng: random.Random, n: int) -> list[int]:
    return [0, *sorted(rng.sample(range(1, n), rng.randint(0, min(6, n - 1))))]


def _gap_string(b: list[int], n: int) -> str:
    return "".join("1" if i + 1 in b else "0" for i in range(n - 1))


def test_pk_windowdiff_match_segeval_and_nltk():
    import segeval
    from nltk.metrics.segmentation import pk as nltk_pk
    from nltk.metrics.segmentation import windowdiff as nltk_wd

    rng = random.Random(1)
    for _ in range(60):
        n = rng.randint(4, 40)
        ref, hyp = _random_seg(rng, n), _random_seg(rng, n)
        k = rng.randint(1, n - 1)
        mr, mh = M.masses(ref, n), M.masses(hyp, n)
        assert M.pk(ref, hyp, n, k) == pytest.approx(float(segeval.pk(mh, mr, window_size=k)))
        assert M.windowdiff(ref, hyp, n, k) == pytest.approx(
            float(segeval.window_diff(mh, mr, window_size=k))
        )
        # and nltk itself on the gap string (N-1 chars, '1' at gap b-1)
        gr, gh = (_gap_string(b, n) for b in (ref, hyp))
        assert M.pk(ref, hyp, n, k) == pytest.approx(nltk_pk(gr, gh, k))
        assert M.windowdiff(ref, hyp, n, k) == pytest.approx(nltk_wd(gr, gh, k))


# --- Boundary Similarity, count ---------------------------------------------------------------------


def test_boundary_similarity_hand_computed():
    # B = 1 - (A_e + w_t) / (A_e + T_e + B_M), n_t = 2, a transposition weighs span / n_t
    # ref [0,5] vs hyp [0,4], n=10: one near miss spanning 1 -> 1 - (0 + 1/2) / (0 + 1 + 0) = 0.5
    assert M.boundary_similarity([0, 5], [0, 4], 10) == pytest.approx(0.5)
    # ref [0,5] vs hyp [0,2,5]: one match, one addition -> 1 - 1 / (1 + 0 + 1) = 0.5
    assert M.boundary_similarity([0, 5], [0, 2, 5], 10) == pytest.approx(0.5)
    # off by 2 is beyond n_t: two additions -> 1 - 2/2 = 0
    assert M.boundary_similarity([0, 5], [0, 3], 10) == 0.0
    assert M.boundary_similarity([0, 5], [0], 10) == 0.0
    assert M.boundary_similarity([0], [0], 10) == 1.0  # segeval itself crashes here
    assert M.masses([0, 3, 7], 10) == [3, 4, 3]


def test_count_error():
    assert M.count_error([0, 5, 9], [0]) == -2
    assert M.count_error([0], [0, 1, 2]) == 2


def test_identity_properties():
    rng = random.Random(2)
    for _ in range(20):
        n = rng.randint(2, 60)
        b = _random_seg(rng, n)
        for k in (0, 1, 5):
            assert M.boundary_prf(b, b, k)[2] == 1.0
        assert M.pk(b, b, n) == 0.0
        assert M.windowdiff(b, b, n) == 0.0
        assert M.boundary_similarity(b, b, n) == 1.0


# --- titles ------------------------------------------------------------------------------------------


def test_title_rouge_l():
    ref = [(0, "Intro"), (10, "Budget review"), (30, "Wrap up")]
    hyp = [(0, "Intro"), (11, "Reviewing the budget")]
    # pairs (0,0) and (10,11); 30 unmatched. "Intro" = 1.0.
    # stemmed tokens [budget, review] vs [review, the, budget]: LCS = 1 -> P=1/3, R=1/2, F=0.4
    # mean = (1.0 + 0.4) / 2 = 0.7
    assert M.title_rouge_l(ref, hyp, 1) == pytest.approx(0.7)
    assert M.title_rouge_l(ref, hyp, 0) == pytest.approx(1.0)  # only the chapter at 0 matches
    assert M.title_rouge_l(ref, [], 5) is None


# --- score / aggregate -------------------------------------------------------------------------------


def _transcript(n: int = 20, times: bool = True) -> Transcript:
    segs = [
        Segment(text=f"s{i}", start=10.0 * i if times else None, end=10.0 * i + 9 if times else None)
        for i in range(n)
    ]
    chs = [
        Chapter(title="Intro", start_segment=0),
        Chapter(title="Budget", start_segment=8),
        Chapter(title="Wrap up", start_segment=15),
    ]
    return Transcript(id="t1", segments=segs, chapters=chs)


def _pred(chs: list[tuple[int, str]], **meta) -> Prediction:
    return Prediction(
        id="t1",
        model="test",
        meta=meta,
        chapters=[PredictedChapter(start_segment=s, title=t) for s, t in chs],
    )


KEYS = {
    "f1",
    "f1_k1",
    "precision_k1",
    "recall_k1",
    "f1_k5",
    "precision_k5",
    "recall_k5",
    "f1_3s",
    "f1_5s",
    "pk",
    "windowdiff",
    "boundary_similarity",
    "count_error",
    "abs_count_error",
    "n_ref",
    "n_hyp",
    "title_rouge_l",
    "start_auc",
    "parsed_clean",
    "repaired",
    "unusable",
}


def test_score_perfect():
    t = _transcript()
    s = M.score(t, _pred([(c.start_segment, c.title) for c in t.chapters]))
    assert set(s) == KEYS
    assert s["f1_k1"] == s["f1_k5"] == s["f1_3s"] == s["f1_5s"] == 1.0
    assert s["pk"] == s["windowdiff"] == 0.0 and s["boundary_similarity"] == 1.0
    assert s["count_error"] == s["abs_count_error"] == 0.0 and s["n_ref"] == s["n_hyp"] == 3.0
    assert s["title_rouge_l"] == 1.0
    assert (s["parsed_clean"], s["repaired"], s["unusable"]) == (1.0, 0.0, 0.0)


def test_score_imperfect():
    t = _transcript()  # ref boundaries 0, 8, 15 over 20 segments, 10 s apart
    p = _pred([(0, "Intro"), (10, "Budget"), (13, "Costs"), (16, "Wrap-up")], health="repaired")
    # start time given on the prediction wins over the segment's: 10 -> 79 s instead of 100 s
    p.chapters[1].start = 79.0
    s = M.score(t, p)
    # k=1: R={8,15}, H={10,13,16}: 15-16 only -> P=1/3, R=1/2, F=0.4
    # k=5: 8-10, 15-16 -> P=2/3, R=1, F=0.8
    assert (s["precision_k1"], s["recall_k1"], s["f1_k1"]) == pytest.approx((1 / 3, 1 / 2, 0.4))
    assert (s["precision_k5"], s["recall_k5"], s["f1_k5"]) == pytest.approx((2 / 3, 1.0, 0.8))
    # times: R={80,150}, H={79,130,160}; 3 s: 80-79 -> P=1/3, R=1/2, F=0.4; 5 s: same
    assert s["f1_3s"] == pytest.approx(0.4) and s["f1_5s"] == pytest.approx(0.4)
    assert s["count_error"] == 1.0 and s["abs_count_error"] == 1.0
    assert 0 < s["pk"] < 1 and 0 < s["windowdiff"] < 1 and 0 < s["boundary_similarity"] < 1
    # titles matched within 5: Intro-Intro 1.0, Budget-Budget 1.0, "Wrap up"-"Wrap-up" 1.0 -> 1.0
    assert s["title_rouge_l"] == pytest.approx(1.0)
    assert (s["parsed_clean"], s["repaired"], s["unusable"]) == (0.0, 1.0, 0.0)


def test_score_single_chapter_no_times_and_empty():
    t = _transcript(times=False)
    s = M.score(t, _pred([(0, "Everything")]))
    assert s["f1_k1"] == s["f1_k5"] == 0.0 and s["pk"] > 0
    assert s["f1_3s"] is None and s["f1_5s"] is None
    # an empty (unusable) prediction scores as one chapter; no titles to compare
    e = M.score(t, _pred([], health="unusable"))
    assert e["n_hyp"] == 1.0 and e["f1_k5"] == 0.0 and e["title_rouge_l"] is None and e["unusable"] == 1.0
    with pytest.raises(ValueError):
        M.score(t, _pred([(0, "x")], health="weird"))
    with pytest.raises(ValueError):
        M.score(Transcript(id="x", segments=t.segments), _pred([(0, "x")]))


def test_start_auc_ranks_true_starts():
    # ref starts 0, 8, 15 of 20; segment 0 is never a decision
    perfect = [0.0] * 20
    perfect[8] = perfect[15] = 0.9
    assert M.start_auc([0, 8, 15], perfect, 20) == 1.0
    assert M.start_auc([0, 8, 15], [1.0 - p for p in perfect], 20) == 0.0
    assert M.start_auc([0, 8, 15], [0.3] * 20, 20) == 0.5  # ties: no evidence
    # 17 negatives: start 8 beats 16 and ties one (16.5 pairs), start 15 sits below all of them (0)
    mixed = [0.1] * 20
    mixed[8], mixed[3], mixed[15] = 0.5, 0.5, 0.05
    assert M.start_auc([0, 8, 15], mixed, 20) == pytest.approx(((16 + 0.5) + 0) / (2 * 17))
    assert M.start_auc([0], perfect, 20) is None  # no boundary: AUC undefined
    assert M.start_auc([0, 8], None, 20) is None  # no scores (baselines, free decoding)
    with pytest.raises(ValueError, match="19 start scores for 20"):
        M.start_auc([0, 8], [0.0] * 19, 20)


def test_score_reports_start_auc_from_meta():
    t = _transcript()
    p = _pred([(0, "Intro"), (8, "Budget")])
    assert M.score(t, p)["start_auc"] is None
    p.meta["start_scores"] = [0.0] * 8 + [1.0] + [0.0] * 11
    assert M.score(t, p)["start_auc"] == pytest.approx((17 + 17 / 2) / 34)  # 8 first; 15 tied with all 17
    p.meta["start_scores"] = [0.0] * 5
    with pytest.raises(ValueError, match="prediction 't1'.*5 start scores"):
        M.score(t, p)


def test_aggregate():
    rows = [
        {"f1_k5": v, "f1_3s": None if i % 2 else v, "unusable": float(i == 0)}
        for i, v in enumerate([0.2, 0.5, 0.9, 0.4, 0.7, 0.1, 0.8])
    ]
    a = M.aggregate(rows, n_boot=500, seed=3)
    assert a == M.aggregate(rows, n_boot=500, seed=3)  # deterministic
    assert a != M.aggregate(rows, n_boot=500, seed=4)
    assert a["f1_k5"]["mean"] == pytest.approx(3.6 / 7)
    assert a["f1_3s"]["mean"] == pytest.approx((0.2 + 0.9 + 0.7 + 0.8) / 4) and a["f1_3s"]["n"] == 4
    assert a["unusable"]["mean"] == pytest.approx(1 / 7)  # a share
    for m in a.values():
        assert m["lo"] <= m["mean"] <= m["hi"]
    assert M.aggregate([]) == {}
    assert "f1_3s" not in M.aggregate([{"f1_k5": 1.0, "f1_3s": None}])
    one = M.aggregate([{"f1_k5": 0.3}])["f1_k5"]
    assert one["lo"] == one["mean"] == one["hi"] == 0.3


def test_score_rows_aggregate_end_to_end():
    t = _transcript()
    rows = [M.score(t, _pred([(0, "a"), (s, "b")])) for s in (7, 8, 12)]
    a = M.aggregate(rows)
    assert set(a) == KEYS - {"start_auc"} and M.PRIMARY in a  # no start scores: no AUC, not a 0
    assert M.LOWER_IS_BETTER <= KEYS


# --- yardstick v2: primary figure, headline, paired differences ---------------------------------------


def test_primary_f1_is_on_time_when_timed_and_on_turns_when_not():
    timed, untimed = _transcript(), _transcript(times=False)
    off_by_one = _pred([(0, "a"), (9, "b"), (16, "c")])  # 1 segment = 10 s off on each boundary
    s_timed, s_untimed = M.score(timed, off_by_one), M.score(untimed, off_by_one)
    assert s_timed["f1"] == s_timed["f1_5s"] == 0.0 and s_timed["f1_k5"] == 1.0  # a line is 10 s here
    assert s_untimed["f1"] == s_untimed["f1_k5"] == 1.0 and s_untimed["f1_5s"] is None


def test_headline_is_the_macro_mean_over_domains():
    rows = [{"id": f"s{i}", "domain": "short", "f1": 0.8} for i in range(90)]
    rows += [{"id": f"t{i}", "domain": "talks", "f1": 0.2} for i in range(10)]
    h = M.headline(rows, n_boot=200)
    assert h["mean"] == pytest.approx(0.5)  # not the pooled 0.74
    assert h["domains"] == {"short": pytest.approx(0.8), "talks": pytest.approx(0.2)}
    assert h["lo"] == pytest.approx(0.5) and h["hi"] == pytest.approx(0.5)  # no spread within domains
    assert M.headline([{"id": "x", "f1": 0.3}])["domains"] == {"all": 0.3}  # no domains: one pool


def test_headline_interval_resamples_within_domains():
    rows = [{"id": f"s{i}", "domain": "short", "f1": float(i % 2)} for i in range(40)]
    rows += [{"id": "t0", "domain": "talks", "f1": 0.5}]  # one talk: always drawn, never dropped
    h = M.headline(rows, n_boot=500, seed=1)
    assert h["lo"] < 0.5 < h["hi"] and h == M.headline(rows, n_boot=500, seed=1)
    assert 0.25 <= h["lo"] and h["hi"] <= 0.75  # talks contributes exactly 0.5 / 2 in every resample


def test_paired_difference_pairs_by_id_and_refuses_unlike_sets():
    a = [{"id": f"x{i}", "domain": "short", "f1": 0.5 + 0.01 * i} for i in range(30)]
    b = [{**r, "f1": r["f1"] - 0.1} for r in reversed(a)]  # other order, same ids
    d = M.paired_headline_diff(a, b, n_boot=300)
    assert d["mean"] == pytest.approx(0.1) and d["lo"] == pytest.approx(0.1) and d["hi"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same transcripts"):
        M.paired_headline_diff(a, b[1:])


def _independent_f1(ref: list[float], hyp: list[float], tol: float) -> float:
    """Boundary F1 by maximum bipartite matching (scipy), written apart from metrics.match."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    if not ref and not hyp:
        return 1.0
    if not ref or not hyp:
        return 0.0
    ok = np.abs(np.subtract.outer(np.array(ref), np.array(hyp))) <= tol + 1e-9
    rows, cols = linear_sum_assignment(ok, maximize=True)
    tp = int(ok[rows, cols].sum())
    return 2 * tp / (len(ref) + len(hyp))


def test_time_f1_agrees_with_an_independent_scorer():
    rng = random.Random(7)
    for _ in range(300):
        ref = sorted(rng.sample(range(600), rng.randint(0, 8)))
        hyp = sorted(rng.sample(range(600), rng.randint(0, 8)))
        ref_t, hyp_t = [0.0] + [r + rng.random() for r in ref], [0.0] + [h + rng.random() for h in hyp]
        got = M.boundary_prf_time(ref_t, hyp_t, 5.0)[2]
        assert got == pytest.approx(_independent_f1(ref_t[1:], hyp_t[1:], 5.0)), (ref_t, hyp_t)
