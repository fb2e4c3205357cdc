"""bench/precision.py moves starts the way it says: by exactly j lines, or onto the matched reference start."""

from __future__ import annotations

import sys

from factories import make_transcript

from chaptering.config import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
import precision


def test_shifted_moves_every_start_by_exactly_j() -> None:
    t = make_transcript(30, (0, 10, 20))
    ref = [0, 10, 20]
    hyp = precision.shifted(2, seed=0)(t, ref, 30)
    assert hyp[0] == 0 and len(hyp) == 3
    assert all(abs(h - r) == 2 for h, r in zip(hyp[1:], ref[1:]))


def test_snapped_moves_only_matched_starts_and_lowers_pk() -> None:
    t = make_transcript(30, (0, 10, 20), tid="s")
    picks = {"s": [0, 13, 27]}  # 13 is within 5 of 10; 27 is 7 from 20: unmatched, stays
    assert precision.snapped(picks)(t, [0, 10, 20], 30) == [0, 10, 27]
    (f1_raw, pk_raw), (f1_snap, pk_snap) = (precision.mean_scores([t], lambda t, r, n: picks["s"]),
                                            precision.mean_scores([t], precision.snapped(picks)))
    assert f1_snap == f1_raw and pk_snap < pk_raw


def test_paused_moves_a_start_to_the_longest_nearby_pause() -> None:
    t = make_transcript(30, (0, 10, 20), tid="p")
    t.segments[11].start = t.segments[10].end + 5.0  # a long pause before line 11
    assert precision.paused({"p": [0, 12, 20]})(t, [0, 10, 20], 30) == [0, 11, 20]
