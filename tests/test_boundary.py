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


def test_the_lexical_cue_is_a_feature_and_travels_with_the_trees(fitted, tmp_path):
    model, _, _ = fitted
    assert model.lexical is not None and model.card["lexical_tokens"] > 0
    folder = model.save(tmp_path / "bm")
    assert (folder / "lexical.json").is_file()
    assert boundary.BoundaryModel.load(folder).card["features"][-1] == boundary.LEXICAL_FEATURE
    (folder / "lexical.json").unlink()
    with pytest.raises(ValueError, match="lexical.json is missing"):
        boundary.BoundaryModel.load(folder)


def test_a_model_without_the_lexical_cue_still_loads_and_scores(fitted, tmp_path):
    """Versions registered before the cue keep serving: their card lists cues.FEATURES only."""
    _, transcripts, cache = fitted
    plain = boundary.fit(transcripts[:20], cache_dir=cache, rounds=20, params={"min_data_in_leaf": 5},
                         progress=False, lexical=False)
    again = boundary.BoundaryModel.load(plain.save(tmp_path / "plain"))
    assert again.lexical is None and not (tmp_path / "plain" / "lexical.json").exists()
    assert again.starts(transcripts[0], cache) == plain.starts(transcripts[0], cache)


def test_a_bag_of_fits_is_one_model_of_their_mean(fitted, tmp_path):
    """bag=k fits k seeds and registers one booster: its trees are all of theirs, its card says how many."""
    _, transcripts, cache = fitted
    kw = {"cache_dir": cache, "rounds": 20, "params": {"min_data_in_leaf": 5}, "progress": False}
    bagged = boundary.fit(transcripts[:20], bag=3, **kw)
    assert bagged.card["bag"] == 3 and len(bagged.card["bag_rounds"]) == 3
    assert bagged.booster.num_trees() == sum(bagged.card["bag_rounds"])
    single = boundary.fit(transcripts[:20], **kw)
    assert single.card["bag"] == 1 and single.scores(transcripts[0], cache) != bagged.scores(transcripts[0], cache)
    again = boundary.BoundaryModel.load(bagged.save(tmp_path / "bag"))
    assert again.scores(transcripts[0], cache) == bagged.scores(transcripts[0], cache)
