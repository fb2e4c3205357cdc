"""On CUDA only (skipped elsewhere): the LLM chapterer and the bundle's titler run where `model.device`
puts them and decide as they do on the CPU, so a GPU worker's evaluation and the CPU's are one yardstick."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import make_transcript

from chaptering.models import load_model
from chaptering.predict import LLMChapterer
from chaptering.titles import LLMTitler

pytestmark = pytest.mark.gpu


def _chapterer(tiny_dir: Path, device: str) -> LLMChapterer:
    model, tok = load_model(str(tiny_dir), device=device)
    return LLMChapterer(model, tok, device, context_tokens=512, max_new_tokens=24, decoding="ranked")


def test_ranked_chapters_on_cuda_match_the_cpu(tiny_dir: Path) -> None:
    t = make_transcript(60, (0, 20, 40))
    cpu, gpu = _chapterer(tiny_dir, "cpu"), _chapterer(tiny_dir, "cuda")
    assert gpu.model.device.type == "cuda"
    a, b = cpu.predict(t), gpu.predict(t)
    assert len(a.meta["start_scores"]) == len(b.meta["start_scores"]) == 60
    assert max(abs(x - y) for x, y in zip(a.meta["start_scores"], b.meta["start_scores"])) < 1e-3
    assert [c.start_segment for c in a.chapters] == [c.start_segment for c in b.chapters]


def test_titles_on_cuda_match_the_cpu(tiny_dir: Path) -> None:
    t = make_transcript(30)
    cpu = LLMTitler(*load_model(str(tiny_dir), device="cpu"), max_new_tokens=6)
    gpu = LLMTitler(*load_model(str(tiny_dir), device="cuda"), max_new_tokens=6)
    assert gpu.titles(t, [0, 10, 20]) == cpu.titles(t, [0, 10, 20])
