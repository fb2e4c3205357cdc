"""Chapter-segmentation metrics: boundary P/R/F1 at a tolerance, Pk, WindowDiff, Boundary Similarity,
chapter-count error and title ROUGE-L, plus a per-transcript `score` and a bootstrap `aggregate`.

Boundaries are sorted lists of segment indices where a chapter starts, 0 included: for a transcript of
N segments, [0, 12, 40] means chapters [0, 12), [12, 40), [40, N).

Conventions (chosen once, documented here, relied on by evaluate/registry):

* Boundary P/R/F1 drop the trivial boundary 0 (every segmentation has it; counting it would give a
  single-chapter guess free credit). This follows the VidChapters / Chapter-Llama distance metrics
  (`zero_handling="remove"`), with two deliberate differences: matches are one-to-one (theirs let one
  reference boundary be claimed by several predictions, which rewards clusters of guesses) and the
  tolerance is inclusive (|i - j| <= k; theirs is strict). Degenerate cases, per transcript:
  both empty -> (1, 1, 1); reference empty, prediction not -> P=0, R=1, F=0; reference non-empty,
  prediction empty -> P=0 (as VidChapters: matched / max(n_pred, 1)), R=0, F=0. So a single-chapter
  prediction against a multi-chapter reference always gets F1 = 0.
* Pk and WindowDiff use `nltk.metrics.segmentation` on the string of N-1 *gaps* between segments
  ('1' where a chapter starts). nltk is O(N) (sliding counts) and returns floats; segeval's versions
  are O(N*k) loops over Decimals. With the gap encoding nltk slides N-k windows of k gaps, which is
  exactly segeval's position-based definition (windows of k+1 units, denominator N-k); nltk on a
  per-segment string of length N would add one always-agreeing window and divide by N-k+1 instead.
  The tests check equality with segeval. Default k = round(N / (2 * reference chapters)), at least 1
  (segeval's default floors at 2 instead); k is clamped to N-1 so tiny transcripts still score
  (one window spanning everything), and N < 2 scores 0 (nothing can be wrong).
* start_auc: ROC AUC of a model's per-segment start scores (`meta["start_scores"]`, ranked decoding)
  against the reference starts, over segments 1..N-1. It says whether the model ranks true starts above
  other lines at all, whatever count rule picks from the ranking (0.5: no evidence). None where the
  prediction has no scores or the reference has no boundary (or nothing but boundaries).
* Boundary Similarity is segeval's B on chapter masses (lengths), n_t = 2 (its default). segeval fails
  when neither side has a boundary; two single-chapter segmentations are identical, so B = 1.
* Yardstick v2. Each transcript's primary figure `f1` is boundary F1 within 5 s (`f1_5s`) when it is
  timed and within 5 segments (`f1_k5`, turns in a meeting) when it is not: a line tolerance on short
  videos rewards equal spacing, a time tolerance does not. Transcripts carry a domain
  (`meta["domain"]`: short, talks, lectures, meetings, work); the headline is the macro mean over domains
  of each domain's mean `f1`, so 60 short videos cannot hide 7 lectures. Its interval resamples
  transcripts within each domain (stratified bootstrap); `paired_headline_diff` does the same on
  per-transcript differences of two models scored on the same transcripts, which is what the gate reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise
from typing import Any

from chaptering.schema import Prediction, Transcript

PRIMARY = "f1"  # per transcript: f1_5s when timed, f1_k5 (turns) when not
HEADLINE = "headline"
DEFAULT_DOMAIN = "all"
LOWER_IS_BETTER = {"pk", "windowdiff", "abs_count_error", "unusable"}
HEALTH = ("clean", "repaired", "unusable")
_HEALTH_KEYS = {"clean": "parsed_clean", "repaired": "repaired", "unusable": "unusable"}
_EPS = 1e-9


# --- matching ---------------------------------------------------------------------------------------


def match(ref: Sequence[float], hyp: Sequence[float], tol: float) -> list[tuple[int, int]]:
    """Optimal one-to-one matching of sorted 1-D points with |r - h| <= tol.

    Maximises the number of pairs, then minimises their total distance. In 1-D any crossing pair of
    matches can be uncrossed without breaking the tolerance or adding distance, so an O(m*n) DP over
    non-crossing matchings is exactly optimal (no scipy/Hungarian needed). Returns (ref_idx, hyp_idx).
    """
    m, n = len(ref), len(hyp)
    # best[i][j] = (pairs, -distance) using ref[:i] and hyp[:j]
    best = [[(0, 0.0)] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        row, prev = best[i], best[i - 1]
        for j in range(1, n + 1):
            cand = max(prev[j], row[j - 1])
            d = abs(ref[i - 1] - hyp[j - 1])
            if d <= tol + _EPS:
                c, negd = prev[j - 1]
                cand = max(cand, (c + 1, negd - d))
            row[j] = cand
    pairs: list[tuple[int, int]] = []
    i, j = m, n
    while i and j:
        if best[i][j] == best[i - 1][j]:
            i -= 1
        elif best[i][j] == best[i][j - 1]:
            j -= 1
        else:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    return pairs[::-1]


def _prf(n_ref: int, n_hyp: int, tp: int) -> tuple[float, float, float]:
    if n_ref == 0 and n_hyp == 0:
        return 1.0, 1.0, 1.0
    p = tp / n_hyp if n_hyp else 0.0
    r = tp / n_ref if n_ref else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def boundary_prf(ref: list[int], hyp: list[int], k: int) -> tuple[float, float, float]:
    """Precision, recall, F1 of chapter boundaries (0 excluded) matched one-to-one within k segments."""
    r = sorted({b for b in ref if b != 0})
    h = sorted({b for b in hyp if b != 0})
    return _prf(len(r), len(h), len(match(r, h, k)))


def boundary_prf_time(
    ref_times: list[float], hyp_times: list[float], tol_s: float
) -> tuple[float, float, float]:
    """Same as `boundary_prf` on chapter start times in seconds (one per chapter; the first is dropped)."""
    r, h = sorted(ref_times[1:]), sorted(hyp_times[1:])
    return _prf(len(r), len(h), len(match(r, h, tol_s)))


# --- window metrics -----------------------------------------------------------------------------------


def _inner(b: Sequence[int], n: int) -> list[int]:
    """Boundaries strictly inside the transcript (1..n-1), sorted and unique."""
    return sorted({x for x in b if 0 < x < n})


def _gaps(b: Sequence[int], n: int) -> str:
    """The N-1 gaps between segments as a 0/1 string; gap g sits between segments g and g+1."""
    s = ["0"] * (n - 1)
    for x in _inner(b, n):
        s[x - 1] = "1"
    return "".join(s)


def default_k(ref: list[int], n: int) -> int:
    """Half the mean reference chapter length in segments, rounded, at least 1."""
    return max(1, round(n / (2 * (len(_inner(ref, n)) + 1))))


def _window_args(ref: list[int], hyp: list[int], n: int, k: int | None) -> tuple[str, str, int] | None:
    if n < 2:
        return None
    k = default_k(ref, n) if k is None else k
    if k < 1:
        raise ValueError(f"window size k must be >= 1, got {k}")
    return _gaps(ref, n), _gaps(hyp, n), min(k, n - 1)


def pk(ref: list[int], hyp: list[int], n: int, k: int | None = None) -> float:
    """Pk (Beeferman et al. 1999): share of k-apart segment pairs judged same/different chapter wrongly."""
    args = _window_args(ref, hyp, n, k)
    if args is None:
        return 0.0
    from nltk.metrics.segmentation import pk as nltk_pk

    r, h, k = args
    return float(nltk_pk(r, h, k))


def windowdiff(ref: list[int], hyp: list[int], n: int, k: int | None = None) -> float:
    """WindowDiff (Pevzner & Hearst 2002): share of k-gap windows whose boundary counts differ."""
    args = _window_args(ref, hyp, n, k)
    if args is None:
        return 0.0
    from nltk.metrics.segmentation import windowdiff as nltk_wd

    r, h, k = args
    return float(nltk_wd(r, h, k))


def masses(b: list[int], n: int) -> list[int]:
    """Chapter lengths (segeval's 'masses') from boundaries."""
    edges = [0, *_inner(b, n), n]
    return [e - s for s, e in pairwise(edges)]


def boundary_similarity(ref: list[int], hyp: list[int], n: int) -> float:
    """segeval's Boundary Similarity B (Fournier 2013): edit distance, with partial credit for near misses."""
    if not _inner(ref, n) and not _inner(hyp, n):
        return 1.0
    import segeval

    return float(segeval.boundary_similarity(masses(hyp, n), masses(ref, n)))


def count_error(ref: list[int], hyp: list[int]) -> int:
    """Signed chapter-count error: > 0 over-segments, < 0 under-segments."""
    return len(hyp) - len(ref)


# --- titles -------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def title_rouge_l(
    ref_chapters: list[tuple[int, str]], hyp_chapters: list[tuple[int, str]], k: int
) -> float | None:
    """Mean ROUGE-L F1 of titles of chapters whose starts match within k (the chapter at 0 included).

    Titles are only comparable where the chapters line up; unmatched chapters are already punished by
    boundary F1. None when nothing matched, so averages skip it rather than count a fake 0.
    """
    ref_chapters, hyp_chapters = sorted(ref_chapters), sorted(hyp_chapters)
    pairs = match([s for s, _ in ref_chapters], [s for s, _ in hyp_chapters], k)
    if not pairs:
        return None
    scorer = _rouge()
    f = [scorer.score(ref_chapters[i][1], hyp_chapters[j][1])["rougeL"].fmeasure for i, j in pairs]
    return sum(f) / len(f)


# --- per transcript and aggregate ---------------------------------------------------------------------


def start_auc(ref: Sequence[int], scores: Sequence[float] | None, n: int) -> float | None:
    """ROC AUC of start scores for segments 1..n-1 (see the module notes)."""
    if scores is None:
        return None
    if len(scores) != n:
        raise ValueError(f"{len(scores)} start scores for {n} segments")
    starts = set(ref)
    labels = [int(i in starts) for i in range(1, n)]
    if len(set(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, list(scores[1:])))


def score(reference: Transcript, prediction: Prediction) -> dict[str, float | None]:
    """All metrics for one transcript. Keys are stable (evaluate, MLflow and the registry read them).

    Predicted chapters starting outside the transcript are dropped; an empty prediction counts as one
    chapter covering everything (what a reader would see), and its `unusable` flag says why. Times come
    from PredictedChapter.start when given, else from the start segment; titles match within 5 segments.
    """
    if reference.chapters is None:
        raise ValueError(f"transcript {reference.id!r} has no reference chapters to score against")
    segs = reference.segments
    n = len(segs)
    ref = reference.boundaries
    hyp_ch = [c for c in prediction.chapters if c.start_segment < n]
    hyp = [c.start_segment for c in hyp_ch] or [0]

    out: dict[str, float | None] = {}
    for k in (1, 5):
        p, r, f = boundary_prf(ref, hyp, k)
        out[f"f1_k{k}"], out[f"precision_k{k}"], out[f"recall_k{k}"] = f, p, r
    if reference.has_times:
        seg_t = [float(sg.start or 0.0) for sg in segs]  # has_times: no None here
        ref_t = [seg_t[b] for b in ref]
        hyp_t = [c.start if c.start is not None else seg_t[c.start_segment] for c in hyp_ch] or ref_t[:1]
        out["f1_3s"] = boundary_prf_time(ref_t, hyp_t, 3.0)[2]
        out["f1_5s"] = boundary_prf_time(ref_t, hyp_t, 5.0)[2]
    else:
        out["f1_3s"] = out["f1_5s"] = None
    out[PRIMARY] = out["f1_5s"] if reference.has_times else out["f1_k5"]
    out["pk"] = pk(ref, hyp, n)
    out["windowdiff"] = windowdiff(ref, hyp, n)
    out["boundary_similarity"] = boundary_similarity(ref, hyp, n)
    try:
        out["start_auc"] = start_auc(ref, prediction.meta.get("start_scores"), n)
    except ValueError as e:
        raise ValueError(f"prediction {prediction.id!r}: {e}") from None
    ce = count_error(ref, hyp)
    out["count_error"], out["abs_count_error"] = float(ce), float(abs(ce))
    out["n_ref"], out["n_hyp"] = float(len(ref)), float(len(hyp))
    out["title_rouge_l"] = title_rouge_l(
        [(c.start_segment, c.title) for c in reference.chapters],
        [(c.start_segment, c.title) for c in hyp_ch],
        5,
    )
    health = prediction.meta.get("health") or "clean"
    if health not in HEALTH:
        raise ValueError(f"prediction {prediction.id!r}: health {health!r} not in {HEALTH}")
    for h, key in _HEALTH_KEYS.items():
        out[key] = float(health == h)
    return out


def aggregate(
    rows: list[dict[str, float | None]], n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Mean and percentile-bootstrap 95% interval per metric, resampling transcripts.

    All metrics share the same resampled transcript sets (paired), so intervals of related metrics are
    comparable. None values are skipped per metric; a metric with no values at all is left out. The 0/1
    health flags come out as shares. Seeded numpy, hence deterministic.
    """
    if not rows:
        return {}
    import numpy as np

    keys = list(dict.fromkeys(k for r in rows for k in r))
    idx = np.random.default_rng(seed).integers(0, len(rows), size=(n_boot, len(rows)))
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        raw = [r.get(key) for r in rows]
        vals = np.array([np.nan if v is None else float(v) for v in raw])
        ok = ~np.isnan(vals)
        if not ok.any():
            continue
        filled = np.where(ok, vals, 0.0)
        sums, counts = filled[idx].sum(axis=1), ok[idx].sum(axis=1)
        boot = sums[counts > 0] / counts[counts > 0]
        lo, hi = np.percentile(boot, [2.5, 97.5]) if boot.size else (np.nan, np.nan)
        out[key] = {"mean": float(vals[ok].mean()), "lo": float(lo), "hi": float(hi), "n": float(ok.sum())}
    return out


# --- yardstick v2: domains and the headline -------------------------------------------------------------


def domain_of(transcript: Transcript) -> str:
    """The held-out domain a transcript is scored in (`meta["domain"]`; one pool when unset)."""
    return str(transcript.meta.get("domain") or DEFAULT_DOMAIN)


def by_domain(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by their `domain` key, domains in first-seen order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r.get("domain") or DEFAULT_DOMAIN), []).append(r)
    return out


def _macro_bootstrap(values: dict[str, Sequence[float]], n_boot: int, seed: int) -> dict[str, Any]:
    """Macro mean over domains of per-domain means, with a 95 % interval from resampling within domains.

    One generator drives every domain in a fixed order, so two calls with the same domains, sizes and
    seed resample the same transcripts: that is what makes `paired_headline_diff` paired.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    domains = sorted(values)
    boot = np.zeros(n_boot)
    means = {}
    for d in domains:
        v = np.asarray(values[d], dtype=float)
        means[d] = float(v.mean())
        boot += v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    boot /= len(domains)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"mean": float(np.mean(list(means.values()))), "lo": float(lo), "hi": float(hi),
            "n": float(sum(len(v) for v in values.values())), "domains": means}


def _primary_values(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for d, rs in by_domain(rows).items():
        vals = [float(r[PRIMARY]) for r in rs if r.get(PRIMARY) is not None]
        if vals:
            out[d] = vals
    return out


def headline(rows: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The one number: macro mean over domains of the primary F1, with its stratified bootstrap interval."""
    values = _primary_values(rows)
    if not values:
        return {}
    return _macro_bootstrap(values, n_boot, seed)


def paired_headline_diff(
    rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Headline of A minus headline of B, bootstrapped on per-transcript differences (pairs by id).

    Both must be scored on the same transcripts: a missing pair raises instead of comparing unlike sets.
    """
    b_by_id = {r["id"]: r for r in rows_b}
    a_ids = {r["id"] for r in rows_a}
    if a_ids != set(b_by_id):
        missing = sorted(a_ids ^ set(b_by_id))[:5]
        raise ValueError(f"paired comparison needs the same transcripts on both sides; differ on {missing}")
    diffs: dict[str, list[float]] = {}
    for r in rows_a:
        other = b_by_id[r["id"]]
        if r.get(PRIMARY) is None or other.get(PRIMARY) is None:
            continue
        diffs.setdefault(str(r.get("domain") or DEFAULT_DOMAIN), []).append(float(r[PRIMARY]) - float(other[PRIMARY]))
    if not diffs:
        raise ValueError("paired comparison: no transcript has a primary F1 on both sides")
    return _macro_bootstrap(diffs, n_boot, seed)


def line_f1_and_pk(starts: list[int], transcript: Transcript) -> tuple[float, float]:
    """F1 within 5 lines and Pk of chapter starts on one transcript (the line-based figures the probe and
    precision benches compare picks on)."""
    ref = [c.start_segment for c in transcript.chapters or []]
    return boundary_prf(ref, starts, 5)[2], pk(ref, starts, len(transcript.segments))
