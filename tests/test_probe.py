"""bench/probe.py reads hidden states at the right tokens and its probe separates lines a model can tell apart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from factories import make_transcript

from chaptering.config import PROJECT_ROOT
from chaptering.models import load_model

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
import probe


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    return load_model(str(tiny_dir))


def test_positions_point_at_line_numbers(tiny) -> None:
    _, tok = tiny
    t = make_transcript(12, (0, 5))
    ids, answer, inline = probe.positions(tok, t)
    assert len(answer) == len(inline) == 12
    # answer: the last digit of k, right before its tag; inline: the `]` that closes `[k]`
    assert [tok.decode(ids[p]).strip() for p in answer] == [str(k)[-1] for k in range(12)]
    assert all(tok.decode(ids[p]).strip().endswith("]") for p in inline)
    assert all(tok.decode(ids[p + 1]).strip() in ("+", "=") for p in answer)
    assert inline[-1] < answer[0]


def test_probe_scores_and_segments(tiny) -> None:
    model, tok = tiny
    rows = probe.features(model, tok, [make_transcript(20, (0, 7, 14), tid=f"t{i}") for i in range(4)], 4096)
    layers = model.config.num_hidden_layers
    assert {"position", f"answer@L{layers}", f"inline+diff@L{layers}"} <= set(rows[0])
    assert len(rows[0][f"answer@L{layers}"]) == len(rows[0]["y"]) == 19
    for r in rows:  # a feature that is the label: the probe must rank and place every start exactly
        r["label"] = [[float(y)] for y in r["y"]]
    m = probe.probe(rows[:3], rows[3:], "label", c=1.0)
    assert m["n"] == 1 and m["auc"] == 1.0
    assert m["oracle_f1_k5"] == 1.0 and m["oracle_pk"] == 0.0
