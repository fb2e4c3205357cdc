"""On CUDA only (skipped elsewhere): 4-bit QLoRA through Unsloth and through PEFT + bitsandbytes on the
embedded model's architecture. Both must write the same kind of adapter folder, and preference tuning
must continue from an Unsloth SFT adapter, as the nightly job does on a GPU worker."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

if torch.cuda.is_available() and importlib.util.find_spec("unsloth"):
    import unsloth  # noqa: F401 - before transformers/TRL, so all of Unsloth's patches apply

from datasets import Dataset
from factories import lora_b, make_transcript

from chaptering.config import TrainSettings
from chaptering.datasets import Windowing, dpo_rows_synthetic, sft_rows
from chaptering.models import load_tokenizer
from chaptering.train import choose_backend, train_preference, train_sft

pytestmark = pytest.mark.gpu


def _cfg(**kw) -> TrainSettings:
    base = {"max_steps": 3, "grad_accum": 1, "max_length": 512, "save_steps": 100, "learning_rate": 2e-4, "dpo_steps": 2}
    return TrainSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def win(embedded_dir: Path) -> Windowing:
    return Windowing(load_tokenizer(str(embedded_dir)), 512, 24)


@pytest.fixture(scope="module")
def rows(win: Windowing) -> list[dict]:
    return list(sft_rows([make_transcript(30, (0, 10, 20), tid=f"g{i}") for i in range(4)], win))


def test_auto_backend_is_unsloth_on_cuda() -> None:
    pytest.importorskip("unsloth")
    assert choose_backend("auto") == "unsloth"


@pytest.mark.parametrize("backend", ["unsloth", "peft"])
def test_qlora_sft_steps_write_an_adapter(backend: str, rows, embedded_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    if backend == "unsloth":
        pytest.importorskip("unsloth")
    result = train_sft(Dataset.from_list(rows * 2), str(embedded_dir), tmp_path, _cfg(), backend=backend)
    assert result.backend == backend and result.steps == 3 and result.tokens_seen > 0
    assert result.losses and all(math.isfinite(loss) for loss in result.losses)  # no NaN from 4-bit
    # LoRA B starts at zero: a non-zero entry was learned through the quantised base
    assert any(v.abs().sum() > 0 for v in lora_b(result.adapter_dir).values())
    assert (result.adapter_dir / "adapter_config.json").is_file()


def test_unsloth_dpo_continues_from_sft_adapter(rows, win: Windowing, embedded_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("unsloth")
    sft = train_sft(Dataset.from_list(rows * 2), str(embedded_dir), tmp_path / "sft", _cfg(), backend="unsloth")
    pairs = list(dpo_rows_synthetic([make_transcript(30, (0, 10, 20), tid=f"d{i}") for i in range(3)], win, seed=0))
    dpo = train_preference(Dataset.from_list(pairs), "dpo", str(embedded_dir), sft.adapter_dir, tmp_path / "dpo",
                           _cfg(), backend="unsloth")
    assert dpo.steps == 2
    before, after = lora_b(sft.adapter_dir), lora_b(dpo.adapter_dir)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
