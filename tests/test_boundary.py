"""The boundary model trains on a small real set, its loss falls, and it round-trips through its files."""


import pytest

from chaptering import boundary

pytestmark = pytest.mark.embedding


@pytest.fixture
def fitted(fitted_boundary):
    return fitted_boundary


def test_training_loss_falls(fitted):
    model, _, _ = fitted
    loss = model.card["train_loss"]
    assert loss[-1] < loss[0] * 0.9
    assert 0.0 < model.decoder.threshold < 1.0


def test_save_load_gives_the_same_starts(fitted, tmp_path):
    model, transcripts, cache = fitted
    again = boundary.BoundaryModel.load(model.save(tmp_path / "bm"))
    for t in transcripts[:5]:
        assert again.starts(t, cache) == model.starts(t, cache)
        assert again.starts(t, cache)[0][0] == 0
    assert not any(p.suffix in {".pkl", ".pickle", ".joblib"} for p in (tmp_path / "bm").iterdir())
