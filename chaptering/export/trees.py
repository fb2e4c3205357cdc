"""The boundary trees as an ONNX TreeEnsemble (onnxmltools' LightGBM converter), scored by the onnxruntime a
device already loads for MiniLM: `import lightgbm` costs a device 0.55 s of its cold start and 27 MB (it
pulls in scipy), for a few hundred trees.

ONNX keeps thresholds in float32 where LightGBM compares in float64. The features are float32 (cues.py), so
each threshold t is first replaced by the largest float32 <= t: for every float32 x, x <= t exactly when x
<= that value, so every row takes the branches it takes in LightGBM (rounding t to nearest instead sends a
feature equal to the rounded value the other way: 0.09 in P on the check rows). What remains is float32
summation over the trees (~1e-7); the export checks the graph against the booster on rows that sit below,
on and above every split threshold and refuses it past `TOLERANCE`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaptering.edge.trees import TreeScorer

TOLERANCE = 1e-5  # max |P_onnx - P_lightgbm| over the check rows: far below any decoder threshold step


def export_trees(booster: Any, out: Path, check_rows: int = 4096, seed: int = 0) -> dict[str, Any]:
    """Write `out` (one TreeEnsembleClassifier); returns {trees, max_abs_diff, check_rows} for the manifest."""
    import numpy as np
    import onnx
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    n_features = booster.num_feature()
    model = convert_lightgbm(_float32_thresholds(booster), initial_types=[("features", FloatTensorType([None, n_features]))],
                             zipmap=False, target_opset=15)
    # Keep P(start) only: the label output's declared shape makes onnxruntime warn on every call.
    prob = next(o for o in model.graph.output if o.name != "label")
    del model.graph.output[:]
    model.graph.output.append(prob)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    x = _check_rows(booster, n_features, check_rows, np.random.default_rng(seed))
    want = booster.predict(x)
    got = TreeScorer.from_bytes(data, prob.name).predict(x)
    diff = float(np.max(np.abs(got - want)))
    if not diff <= TOLERANCE:
        raise RuntimeError(f"ONNX trees differ from LightGBM by {diff:.2e} (> {TOLERANCE:g}) on {len(x)} check rows")
    Path(out).write_bytes(data)
    return {"trees": f"boundary/{Path(out).name}", "max_abs_diff": diff, "check_rows": len(x)}


def _float32_thresholds(booster: Any) -> Any:
    """The same trees with each split threshold moved down to the nearest float32 (see the module doc)."""
    import lightgbm as lgb
    import numpy as np

    def down(token: str) -> str:
        t = float(token)
        f = np.float32(t)
        if float(f) > t:
            f = np.nextafter(f, np.float32(-np.inf))
        return repr(float(f))

    # tree_sizes (each tree's byte length, for parallel parsing) no longer holds once thresholds are rewritten.
    lines = [ln for ln in booster.model_to_string().split("\n") if not ln.startswith("tree_sizes=")]
    for i, line in enumerate(lines):
        if line.startswith("threshold="):
            lines[i] = "threshold=" + " ".join(down(v) for v in line.removeprefix("threshold=").split())
    return lgb.Booster(model_str="\n".join(lines))


def _check_rows(booster: Any, n_features: int, n: int, rng: Any) -> Any:
    """Rows whose every value sits just below, on or just above one of that feature's split thresholds:
    every branch of every tree is taken both ways somewhere in the batch."""
    import numpy as np

    thresholds: list[list[float]] = [[] for _ in range(n_features)]

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            thresholds[node["split_feature"]].append(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    x = np.zeros((n, n_features), dtype=np.float32)
    for j, ts in enumerate(thresholds):
        if not ts:
            continue
        t = np.asarray(ts, dtype=np.float64)[rng.integers(0, len(ts), n)]
        step = np.maximum(np.abs(t) * 1e-3, 1e-6) * rng.choice([-1.0, 0.0, 1.0], n)
        x[:, j] = (t + step).astype(np.float32)
    return x
