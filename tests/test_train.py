"""Training on CPU with the tiny model: SFT and DPO/KTO steps change the adapter and lower the loss,
a crashed run resumes from its checkpoint, and the backend choice is right for this machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from factories import lora_b, make_transcript

from chaptering.config import TrainSettings
from chaptering.datasets import Windowing, dpo_rows_synthetic, sample_rows, sft_rows
from chaptering.models import load_tokenizer
from chaptering.train import choose_backend, train_preference, train_sft


def _cfg(**kw) -> TrainSettings:
    base = {"max_steps": 6, "grad_accum": 1, "max_length": 512, "save_steps": 2, "learning_rate": 5e-3, "dpo_steps": 3,
                "target_modules": ["q_proj", "v_proj"], "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    return TrainSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def rows(tiny_dir: Path) -> list[dict]:
    win = Windowing(load_tokenizer(str(tiny_dir)), 512, 24)
    return list(sft_rows([make_transcript(30, (0, 10, 20), tid=f"t{i}") for i in range(2)], win))


def test_backend_on_cpu_is_peft() -> None:
    assert choose_backend("auto") == "peft"
    assert choose_backend("peft") == "peft"
    with pytest.raises(RuntimeError, match="CUDA"):
        choose_backend("unsloth")


def test_sft_changes_adapter_and_lowers_loss(rows, tiny_dir: Path, tmp_path: Path) -> None:
    result = train_sft(Dataset.from_list(rows * 4), str(tiny_dir), tmp_path, _cfg())
    assert result.steps == 6 and result.tokens_seen > 0
    assert result.last_loss < result.first_loss
    # LoRA B starts at zero: any non-zero entry was learned
    assert any(v.abs().sum() > 0 for v in lora_b(result.adapter_dir).values())
    assert (result.adapter_dir / "training.json").is_file()


def test_sft_resumes_after_crash(rows, tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt, match="simulated crash"):
        train_sft(Dataset.from_list(rows * 4), str(tiny_dir), tmp_path, _cfg(), stop_after=3)
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir()
    result = train_sft(Dataset.from_list(rows * 4), str(tiny_dir), tmp_path, _cfg())
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-2")
    assert result.steps == 6


def test_dpo_and_kto_on_top_of_sft(rows, tiny_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(max_steps=2)
    sft = train_sft(Dataset.from_list(rows), str(tiny_dir), tmp_path / "sft", cfg)
    before = lora_b(sft.adapter_dir)
    win = Windowing(load_tokenizer(str(tiny_dir)), 512, 24)
    pairs = list(dpo_rows_synthetic([make_transcript(30, (0, 10, 20), tid=f"d{i}") for i in range(3)], win, seed=0))
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    dpo = train_preference(Dataset.from_list(pairs), "dpo", str(tiny_dir), sft.adapter_dir, tmp_path / "dpo", cfg)
    after = lora_b(dpo.adapter_dir)
    assert dpo.steps == cfg.dpo_steps
    assert any(not torch.equal(before[k], after[k]) for k in before)
    kto_rows = [{"prompt": p["prompt"], "completion": p[k], "label": k == "chosen"} for p in pairs
                for k in ("chosen", "rejected")]
    kto = train_preference(Dataset.from_list(kto_rows), "kto", str(tiny_dir), dpo.adapter_dir, tmp_path / "kto", cfg)
    assert kto.steps == cfg.dpo_steps


def test_sampling_downweights_single_chapter_windows() -> None:
    ds = Dataset.from_list([{"source": "a", "n_chapters": 1, "i": i} for i in range(80)]
                           + [{"source": "a", "n_chapters": 3, "i": i} for i in range(20)])
    picked = sample_rows(ds, 20, seed=0, single_chapter_weight=0.25)
    share_single = sum(1 for r in picked if r["n_chapters"] == 1) / len(picked)
    assert len(picked) == 20 and share_single <= 0.6  # 80 % in the pool


def test_sampling_gives_named_sources_their_share() -> None:
    ds = Dataset.from_list([{"source": "video", "n_chapters": 3}] * 50 + [{"source": "meet/a", "n_chapters": 3}] * 300
                           + [{"source": "lecture", "n_chapters": 3}] * 300)
    picked = sample_rows(ds, 40, seed=0, source_shares={"video": 0.5})
    videos = sum(1 for r in picked if r["source"] == "video")
    assert 12 <= videos <= 28  # about half, though videos are 8 % of the pool


def test_weighted_nll_weights_decision_tokens() -> None:
    from chaptering.train import weighted_nll

    labels = torch.tensor([[-100, 5, 7, 9, 7]])  # token 7 is a decision; the first label is never scored
    log_probs = torch.log(torch.tensor([[0.5, 0.1, 0.5, 0.5]]))  # scores labels[:, 1:]
    plain, dec = weighted_nll(log_probs, labels, torch.tensor([7]), 1.0)
    assert plain.item() == pytest.approx(-torch.log(torch.tensor([0.5, 0.1, 0.5, 0.5])).mean().item())
    assert dec.item() == pytest.approx(-(torch.log(torch.tensor(0.1)) + torch.log(torch.tensor(0.5))).item() / 2)
    heavy, _ = weighted_nll(log_probs, labels, torch.tensor([7]), 9.0)
    assert heavy.item() > plain.item()  # the worst-predicted token is a decision: weighting it raises the loss
    # under gradient accumulation the loss is this micro-batch's share of all tokens
    half, _ = weighted_nll(log_probs, labels, torch.tensor([7]), 1.0, num_items_in_batch=8)
    assert half.item() == pytest.approx(plain.item() / 2)


def test_decision_weighted_sft_logs_decision_loss(rows, tiny_dir: Path, tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)  # a store of its own; the experiment another test selected is not in it
    exp = mlflow.MlflowClient(uri).create_experiment("decision-loss", artifact_location=str(tmp_path / "art"))
    with mlflow.start_run(experiment_id=exp) as run:
        result = train_sft(Dataset.from_list(rows * 4), str(tiny_dir), tmp_path / "out", _cfg(decision_weight=5.0))
    assert result.last_loss < result.first_loss
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "sft_decision_loss")
    assert len(history) == 6 and history[-1].value < history[0].value
