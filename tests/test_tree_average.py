"""Averaging boosters into one model: its logit is the mean of theirs, and it saves and reloads as one."""

import numpy as np
import pytest

from chaptering.tree_average import average

lgb = pytest.importorskip("lightgbm")


def _boosters(n_features=6, seeds=(0, 1, 2)):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, n_features)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.8, size=600) > 0.8).astype(float)
    params = {"objective": "binary", "num_leaves": 7, "bagging_fraction": 0.7, "bagging_freq": 1,
              "feature_fraction": 0.7, "verbosity": -1, "num_threads": 1}
    # Different round counts too: fits of a bag stop early on different rounds.
    return x, [lgb.train({**params, "seed": s}, lgb.Dataset(x, y), num_boost_round=10 + 5 * i)
               for i, s in enumerate(seeds)]


def test_the_average_scores_the_mean_logit_of_its_boosters(tmp_path):
    x, boosters = _boosters()
    merged = average(boosters)
    want = np.mean([b.predict(x, raw_score=True) for b in boosters], axis=0)
    assert np.allclose(merged.predict(x, raw_score=True), want, atol=1e-9)
    assert np.allclose(merged.predict(x), 1 / (1 + np.exp(-want)), atol=1e-9)
    assert merged.num_trees() == sum(b.num_trees() for b in boosters)
    assert not np.allclose(boosters[0].predict(x), boosters[1].predict(x))  # the seeds made different trees
    merged.save_model(str(tmp_path / "m.txt"))
    again = lgb.Booster(model_file=str(tmp_path / "m.txt"))
    assert np.allclose(again.predict(x), merged.predict(x), atol=1e-12)


def test_one_booster_is_its_own_average():
    _x, boosters = _boosters(seeds=(3,))
    assert average(boosters) is boosters[0]


def test_boosters_over_other_features_are_refused():
    _, six = _boosters(n_features=6, seeds=(0,))
    _, five = _boosters(n_features=5, seeds=(0,))
    with pytest.raises(ValueError, match="booster 1 has other features"):
        average([six[0], five[0]])
    with pytest.raises(ValueError, match="at least one"):
        average([])


def test_the_average_exports_as_one_onnx_tree_ensemble(tmp_path):
    """The device runtime scores a bag as it scores one fit: one ONNX graph, LightGBM's probabilities."""
    pytest.importorskip("onnxmltools")
    from chaptering.edge.trees import TreeScorer
    from chaptering.export.trees import export_trees

    x, boosters = _boosters()
    merged = average(boosters)
    info = export_trees(merged, tmp_path / "boundary.onnx")
    assert info["max_abs_diff"] <= 1e-5
    assert np.allclose(TreeScorer.load(tmp_path / "boundary.onnx").predict(x), merged.predict(x), atol=1e-5)
