"""Several LightGBM boosters as one: a booster whose raw score (logit) is the mean of theirs.

Why: fits of the boundary trees that differ only in their bagging seed land up to 0.05 apart on the
held-out headline (docs/boundary-model.md), so one fixed seed makes the nightly a lottery. The mean of k
fits is steadier, and written as one model (every tree of every fit, leaf values scaled by 1/k) it saves,
registers, exports to ONNX and runs on a device exactly as a single booster does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_TREE = re.compile(r"^Tree=\d+\n", re.MULTILINE)
_SCALED = ("leaf_value=", "internal_value=")  # internal values feed SHAP contributions; keep them consistent


def average(boosters: Sequence[Any]) -> Any:
    """One booster predicting sigmoid(mean of the boosters' logits); the boosters themselves are unchanged."""
    import lightgbm as lgb

    if not boosters:
        raise ValueError("average() needs at least one booster")
    if len(boosters) == 1:
        return boosters[0]
    k = len(boosters)
    header, footer, trees = "", "", []
    for i, booster in enumerate(boosters):
        text = booster.model_to_string()  # the best iteration when early stopping found one
        head, body = _split_header(text)
        if i == 0:
            header, footer = head, body[body.index("end of trees"):]
        elif _model_shape(head) != _model_shape(header):
            raise ValueError(f"booster {i} has other features or objective than booster 0; cannot average")
        trees += [_scaled(block, 1.0 / k) for block in _TREE.split(body[:body.index("end of trees")])[1:]]
    # tree_sizes (each tree's byte length, for parallel parsing) no longer holds; LightGBM parses without it.
    header = "\n".join(ln for ln in header.split("\n") if not ln.startswith("tree_sizes="))
    body = "".join(f"Tree={n}\n{block}" for n, block in enumerate(trees))
    return lgb.Booster(model_str=f"{header}{body}{footer}")


def _split_header(text: str) -> tuple[str, str]:
    m = _TREE.search(text)
    if m is None:
        raise ValueError("booster has no trees")
    return text[:m.start()], text[m.start():]


def _model_shape(header: str) -> list[str]:
    keep = ("num_class=", "num_tree_per_iteration=", "max_feature_idx=", "objective=", "feature_names=")
    return [ln for ln in header.split("\n") if ln.startswith(keep)]


def _scaled(block: str, factor: float) -> str:
    lines = block.split("\n")
    for i, line in enumerate(lines):
        for key in _SCALED:
            if line.startswith(key):
                lines[i] = key + " ".join(repr(float(v) * factor) for v in line.removeprefix(key).split())
    return "\n".join(lines)
