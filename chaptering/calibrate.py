"""Choose the chapter-start threshold on the validation split, right after training.

Chapter starts are rare (about one line in six on short videos, one in a hundred in meetings), so a
model's P(+) for a true start is often under 0.5 and greedy decoding under-splits. The threshold that
maximises line-level boundary F1 on held-back *training-side* windows (the val split, never the eval
set) is written next to the adapter as decoding.json; evaluation and serving read it from there.
One teacher-forced forward pass per window gives P(+) at every line at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FILE = "decoding.json"
GRID = [round(0.02 * i, 2) for i in range(1, 50)]  # 0.02 .. 0.98


def tag_scores(model: Any, tok: Any, rows: Iterable[dict[str, Any]]) -> list[tuple[float, bool]]:
    """(P(+) against P(=), is a reference start) for every line after line 0 of each window."""
    import torch

    from chaptering.constrain import start_probability, tag_token_ids

    ids = tag_token_ids(tok)
    out: list[tuple[float, bool]] = []
    with torch.inference_mode():
        for row in rows:
            prompt_len = len(tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"])
            full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=True,
                                           return_tensors="pt")["input_ids"]
            logits = model(input_ids=full.to(model.device)).logits[0]
            tags = [p for p in range(prompt_len, full.shape[1])
                    if int(full[0, p]) in (ids["start"], ids["same"])]
            for p in tags[1:]:  # line 0 always opens a chapter: not a decision
                out.append((start_probability(logits[p - 1], ids), int(full[0, p]) == ids["start"]))
    return out


def best_threshold(scores: list[tuple[float, bool]], grid: list[float] = GRID) -> tuple[float, float]:
    """(threshold, line-level F1 there); ties go to the higher threshold (fewer, surer chapters)."""
    best = (0.5, -1.0)
    for t in grid:
        tp = sum(1 for p, y in scores if p >= t and y)
        fp = sum(1 for p, y in scores if p >= t and not y)
        fn = sum(1 for p, y in scores if p < t and y)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 >= best[1]:
            best = (t, f1)
    return best


def calibrate(adapter_dir: Path, model: Any, tok: Any, rows: Any, max_windows: int = 200, seed: int = 0) -> dict:
    """Fit the threshold on up to `max_windows` val windows; write and return decoding.json's content."""
    if rows is None or len(rows) == 0:
        return {}
    rows = rows.shuffle(seed=seed).select(range(min(max_windows, len(rows))))
    scores = tag_scores(model, tok, rows)
    if not any(y for _, y in scores):
        return {}
    threshold, f1 = best_threshold(scores)
    at_half = best_threshold(scores, [0.5])[1]
    info = {"start_threshold": threshold, "val_line_f1": round(f1, 4), "val_line_f1_at_0.5": round(at_half, 4),
            "val_windows": len(rows), "val_lines": len(scores), "val_starts": sum(y for _, y in scores)}
    (Path(adapter_dir) / FILE).write_text(json.dumps(info, indent=2))
    return info


def read_threshold(adapter_dir: Path | None) -> float | None:
    """The calibrated threshold stored beside an adapter, if any."""
    path = Path(adapter_dir) / FILE if adapter_dir is not None else None
    if path is None or not path.is_file():
        return None
    return float(json.loads(path.read_text())["start_threshold"])
