"""LoRA / QLoRA fine-tuning: SFT, then DPO or KTO on top when preference data exists.

The backend is chosen at run time: Unsloth (4-bit) on CUDA when installed, else plain PEFT + TRL
(4-bit bitsandbytes QLoRA on CUDA, full precision on CPU). Both write the same thing: a PEFT adapter
folder (safetensors) with the tokenizer and a `training.json` of what was done.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from chaptering.config import TrainSettings

Backend = Literal["unsloth", "peft"]


@dataclass
class TrainResult:
    adapter_dir: Path
    stage: str
    backend: str
    steps: int
    train_loss: float | None
    first_loss: float | None
    last_loss: float | None
    tokens_seen: int
    seconds: float
    resumed_from: str | None = None
    losses: list[float] = field(default_factory=list)
    # (seconds since the stage started, tokens seen) at each logged step: steady-state speed without
    # the model load and the first steps' compilation, which `seconds` includes
    progress: list[tuple[float, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adapter_dir"] = str(self.adapter_dir)
        return d


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str) -> Backend:
    """Unsloth needs CUDA and the package; `auto` falls back to PEFT everywhere else."""
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "unsloth":
        if not (cuda_available() and has_unsloth):
            raise RuntimeError("backend 'unsloth' needs CUDA and `pip install unsloth` (see README, GPU)")
        return "unsloth"
    if requested == "peft":
        return "peft"
    return "unsloth" if cuda_available() and has_unsloth else "peft"


def _lora_config(cfg: TrainSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules), task_type="CAUSAL_LM", bias="none",
    )


def load_for_training(base: str, cfg: TrainSettings, backend: Backend, adapter: Path | None = None) -> tuple[Any, Any]:
    """(model with trainable LoRA, tokenizer). With `adapter`, training continues from that adapter."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(adapter or base), max_seq_length=cfg.max_length, load_in_4bit=cfg.load_in_4bit,
        )
        if adapter is None:
            model = FastLanguageModel.get_peft_model(
                model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.target_modules), use_gradient_checkpointing="unsloth",
                random_state=cfg.seed,
            )
        return model, tok

    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from chaptering.models import load_tokenizer

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if cuda_available():
        kwargs["dtype"] = torch.bfloat16
        if cfg.load_in_4bit:
            from transformers import BitsAndBytesConfig  # bitsandbytes is imported only here

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_use_double_quant=True,
            )
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if "quantization_config" in kwargs:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    else:
        model = get_peft_model(model, _lora_config(cfg))
    return model, load_tokenizer(base)


def _common_args(cfg: TrainSettings, out_dir: Path, max_steps: int, lr: float) -> dict[str, Any]:
    on_cpu = not cuda_available()
    return {
        "output_dir": str(out_dir / "checkpoints"),
        "max_steps": max_steps,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": lr,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, max_steps // 10),
        "logging_steps": 1,
        "save_steps": cfg.save_steps,
        "save_total_limit": 2,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "report_to": [],
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "use_cpu": on_cpu,
        "bf16": not on_cpu,
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
        "save_only_model": False,
    }


class _Tracker:
    """TrainerCallback: keeps the loss curve and tokens seen; mirrors them to an active MLflow run."""

    def __init__(self, stage: str, stop_after: int | None = None) -> None:
        from transformers import TrainerCallback

        tracker = self

        class CB(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                tracker.on_log(state.global_step, logs or {})

            def on_step_end(self, args, state, control, **kw):
                if tracker.stop_after is not None and state.global_step >= tracker.stop_after:
                    raise KeyboardInterrupt(f"simulated crash after step {state.global_step}")

        self.callback, self.stage, self.stop_after = CB(), stage, stop_after
        self.losses: list[float] = []
        self.tokens = 0
        self.progress: list[tuple[float, int]] = []
        self.t0 = time.perf_counter()

    def on_log(self, step: int, logs: dict[str, float]) -> None:
        self.tokens = int(logs.get("num_input_tokens_seen", self.tokens) or self.tokens)
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))
            self.progress.append((round(time.perf_counter() - self.t0, 3), self.tokens))
        mlflow = sys.modules.get("mlflow")  # a run can only be active if the caller imported mlflow
        if mlflow is not None and mlflow.active_run() is not None:
            keys = ("loss", "decision_loss", "learning_rate", "grad_norm", "rewards/accuracies", "rewards/margins",
                    "kl")
            mlflow.log_metrics({f"{self.stage}_{k.replace('/', '_')}": float(v) for k, v in logs.items()
                                if k in keys and v is not None}, step=step)


def _last_checkpoint(out_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = out_dir / "checkpoints"
    return get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None


def _finish(trainer: Any, tok: Any, out_dir: Path, tracker: _Tracker, stage: str, backend: str, t0: float,
            resumed: str | None, extra: dict[str, Any]) -> TrainResult:
    adapter_dir = out_dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir), safe_serialization=True)
    tok.save_pretrained(str(adapter_dir))
    state = trainer.state
    result = TrainResult(
        adapter_dir=adapter_dir, stage=stage, backend=backend, steps=state.global_step,
        train_loss=(sum(tracker.losses) / len(tracker.losses)) if tracker.losses else None,
        first_loss=tracker.losses[0] if tracker.losses else None,
        last_loss=tracker.losses[-1] if tracker.losses else None,
        tokens_seen=int(getattr(state, "num_input_tokens_seen", 0) or tracker.tokens),
        seconds=round(time.perf_counter() - t0, 1), resumed_from=resumed, losses=tracker.losses,
        progress=tracker.progress,
    )
    (adapter_dir / "training.json").write_text(json.dumps({**result.to_dict(), **extra}, indent=2))
    return result


def weighted_nll(log_probs: Any, labels: Any, decision_ids: Any, weight: float,
                 num_items_in_batch: Any = None) -> tuple[Any, Any]:
    """(loss, mean NLL of the decision tokens) with decision tokens weighted `weight` against the rest.

    `log_probs[b, t]` scores `labels[b, t + 1]` (TRL's fused head). The loss is the weighted mean over this
    micro-batch, scaled by its share of the accumulated batch's tokens, so at weight 1 it is exactly TRL's
    token-mean loss and gradient accumulation needs no further division."""
    import torch

    target = labels[:, 1:]
    mask = target != -100
    decision = torch.isin(target, decision_ids) & mask
    w = mask.float() + decision.float() * (weight - 1.0)
    nll = -log_probs
    loss = (nll * w).sum() / w.sum().clamp(min=1e-8)
    if num_items_in_batch is not None:
        loss = loss * mask.sum() / torch.as_tensor(num_items_in_batch).clamp(min=1)
    decision_nll = nll[decision].mean() if decision.any() else nll.new_zeros(())
    return loss, decision_nll.detach()


def _decision_weighted_trainer(base_cls: Any, decision_ids: list[int], weight: float) -> Any:
    """An SFTTrainer whose loss weights the boundary tags (see `weighted_nll`) and logs their NLL, so a
    run shows whether the decisions are learned or only the titles are."""

    class DecisionWeightedSFT(base_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            ids = torch.tensor(decision_ids, device=inputs["labels"].device)
            loss, decision_nll = weighted_nll(outputs.log_probs, inputs["labels"], ids, weight, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["decision_loss"].append(float(decision_nll))
            return (loss, outputs) if return_outputs else loss

    return DecisionWeightedSFT


def train_sft(
    dataset: Any, base: str, out_dir: Path, cfg: TrainSettings, backend: Backend = "peft",
    max_samples: int | None = None, stop_after: int | None = None,
) -> TrainResult:
    """Supervised fine-tuning on prompt/completion rows (loss on the completion only). Resumes from
    the last checkpoint in `out_dir` if one exists. `stop_after` simulates a crash (for tests)."""
    from trl import SFTConfig, SFTTrainer

    t0 = time.perf_counter()
    from chaptering.datasets import sample_rows

    if max_samples is not None and "n_chapters" in dataset.column_names:
        dataset = sample_rows(dataset, max_samples, cfg.seed, cfg.single_chapter_weight, cfg.balance_sources,
                              cfg.source_shares)
    elif max_samples is not None:
        dataset = dataset.shuffle(seed=cfg.seed).select(range(min(max_samples, len(dataset))))
    ds = dataset.select_columns(["prompt", "completion"]).shuffle(seed=cfg.seed)
    model, tok = load_for_training(base, cfg, backend)
    args = SFTConfig(
        **_common_args(cfg, out_dir, cfg.max_steps, cfg.learning_rate),
        max_length=cfg.max_length,
        completion_only_loss=True,
        include_num_input_tokens_seen=True,
    )
    tracker = _Tracker("sft", stop_after)
    trainer_cls = SFTTrainer
    if cfg.decision_weight != 1.0:
        from chaptering.constrain import tag_token_ids

        tag = tag_token_ids(tok)
        trainer_cls = _decision_weighted_trainer(SFTTrainer, [tag["start"], tag["same"]], cfg.decision_weight)
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[tracker.callback])
    resumed = _last_checkpoint(out_dir)
    trainer.train(resume_from_checkpoint=resumed)
    extra = {"base_model": base, "rows": len(ds), "decision_weight": cfg.decision_weight}
    return _finish(trainer, tok, out_dir, tracker, "sft", backend, t0, resumed, extra)


def train_preference(
    dataset: Any, kind: Literal["dpo", "kto"], base: str, sft_adapter: Path, out_dir: Path, cfg: TrainSettings,
    backend: Backend = "peft", stop_after: int | None = None,
) -> TrainResult:
    """DPO (prompt/chosen/rejected) or KTO (prompt/completion/label) on top of the SFT adapter. With a
    PEFT model and no ref_model, TRL uses the adapter-disabled model as reference: no second copy."""
    t0 = time.perf_counter()
    model, tok = load_for_training(base, cfg, backend, adapter=sft_adapter)
    common = _common_args(cfg, out_dir, cfg.dpo_steps, cfg.learning_rate / 4)
    tracker = _Tracker(kind, stop_after)
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        ds = dataset.select_columns(["prompt", "chosen", "rejected"]).shuffle(seed=cfg.seed)
        args = DPOConfig(**common, beta=cfg.dpo_beta, max_length=cfg.max_length)
        trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                             callbacks=[tracker.callback])
    else:
        from trl import KTOConfig, KTOTrainer

        ds = dataset.select_columns(["prompt", "completion", "label"]).shuffle(seed=cfg.seed)
        # KTO estimates its KL term from mismatched pairs inside a batch: it needs at least two rows
        common["per_device_train_batch_size"] = max(2, cfg.batch_size)
        args = KTOConfig(**common, beta=cfg.dpo_beta, max_length=cfg.max_length)
        trainer = KTOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                             callbacks=[tracker.callback])
    resumed = _last_checkpoint(out_dir)
    trainer.train(resume_from_checkpoint=resumed)
    return _finish(trainer, tok, out_dir, tracker, kind, backend, t0, resumed,
                   {"base_model": base, "rows": len(ds), "sft_adapter": str(sft_adapter)})
