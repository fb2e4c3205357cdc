"""The bundle (boundary model + title adapter) as one chapterer: the trees place the chapters, the LM
titles exactly those, and the bundle travels through the registry and back as one pyfunc model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from factories import make_transcript

from chaptering import registry
from chaptering.boundary_chapterer import BoundaryChapterer, is_bundle, write_bundle
from chaptering.config import ModelSettings, Settings
from chaptering.factory import load_chapterer

pytestmark = pytest.mark.embedding


@pytest.fixture
def fitted(fitted_boundary):
    model, transcripts, _ = fitted_boundary
    return model, transcripts


@pytest.fixture
def settings(tmp_path: Path, tiny_dir: Path, monkeypatch) -> Settings:
    monkeypatch.chdir(tmp_path)
    return Settings(state_dir=tmp_path / "state",
                    model=ModelSettings(base=str(tiny_dir), context_tokens=512, max_new_tokens=16)).prepare()


def test_bundle_places_chapters_with_the_trees_and_titles_them_with_the_lm(fitted, adapter_dir, settings, tmp_path):
    model, transcripts = fitted
    bundle = write_bundle(tmp_path / "bundle", model, adapter_dir)
    assert is_bundle(bundle)
    chapterer = load_chapterer(str(bundle), settings)
    assert isinstance(chapterer, BoundaryChapterer) and chapterer.titler is not None
    t = transcripts[0]
    p = chapterer.predict(t)
    starts, _ = model.starts(t, settings.cache_dir)
    assert [c.start_segment for c in p.chapters] == starts
    assert p.meta["titles_written"] + len(p.meta["repairs"]) == len(starts)
    assert all(c.title for c in p.chapters) and len(p.meta["start_scores"]) == len(t.segments)


def test_boundary_model_alone_gives_keyword_titles(fitted, settings, tmp_path):
    model, transcripts = fitted
    chapterer = load_chapterer(str(model.save(tmp_path / "trees")), settings)
    assert chapterer.titler is None and chapterer.model is None
    p = chapterer.predict(transcripts[1])
    assert p.meta["health"] == "clean" and p.meta["titles_written"] == 0 and all(c.title for c in p.chapters)


def test_bundle_registers_and_loads_as_one_pyfunc(fitted, adapter_dir, settings, tmp_path):
    import mlflow
    import pandas as pd

    model, transcripts = fitted
    bundle = write_bundle(tmp_path / "bundle", model, adapter_dir)
    shutil.copy(adapter_dir / "adapter_config.json", bundle / "adapter" / "stray.bin")  # a pickle never travels
    registry.configure(settings)
    cand = registry.log_candidate(bundle, settings.model.base, None, params={}, tags={}, plots=[], settings=settings)
    registry.promote(cand.version, settings)
    path, _, name = registry.fetch_model("champion", settings)
    assert is_bundle(path) and (path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (path / "adapter" / "stray.bin").exists()
    chapterer = load_chapterer("champion", settings)
    assert isinstance(chapterer, BoundaryChapterer) and chapterer.name == name
    t = transcripts[2]
    want = [c.start_segment for c in chapterer.predict(t).chapters]
    assert want == model.starts(t, settings.cache_dir)[0]

    pyfunc = mlflow.pyfunc.load_model(f"models:/{settings.registered_model}@champion")
    out = pyfunc.predict(pd.DataFrame({"transcript": [t.model_dump_json()]}))
    assert [c["start_segment"] for c in json.loads(out.loc[0, "chapters"])] == want


def test_a_bundle_without_its_trees_is_refused(adapter_dir, settings, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(adapter_dir, broken / "adapter")
    (broken / "boundary").mkdir()
    (broken / "boundary" / "boundary.json").write_text("{}")
    with pytest.raises(ValueError, match="expected"):
        load_chapterer(str(broken), settings)


def test_serving_deadline_reaches_the_titler(fitted, adapter_dir, tmp_path, settings):
    model, _ = fitted
    chapterer = load_chapterer(str(write_bundle(tmp_path / "b", model, adapter_dir)), settings)
    chapterer.should_stop = lambda: True
    p = chapterer.predict(make_transcript(n=40, chapters=(0,)))
    assert p.meta["titles_written"] == 0 and p.meta["health"] == "repaired" and all(c.title for c in p.chapters)
