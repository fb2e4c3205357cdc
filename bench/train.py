"""Training speed of the default config: `python bench/train.py [--steps 5] [--backend peft|unsloth]
[--shape smollm2-135m|qwen2.5-0.5b]`.

Reports seconds/step, tokens/s, peak memory and model-FLOPs utilisation against the matmul rate
measured in the same process (so a busy or different machine moves both numbers together). FLOPs
per token use the usual 6 x parameters (forward + backward); LoRA skips the frozen weights'
gradients, so the work really done is closer to 4 x: both utilisations are reported.
`--shape` trains a random model of a published architecture (with the embedded tokenizer) instead of
the configured base: speed depends on the shapes, not the weights, and the hub is out of reach.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from chaptering.config import PROJECT_ROOT, apply_overrides, get_settings

OUT = PROJECT_ROOT / "out" / "bench"


def matmul_gflops(n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    n = n if device == "cpu" else 8192  # a GPU needs a large product to reach its peak
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--base", default=None, help="model.base override (embedded, hub id or folder)")
    ap.add_argument("--shape", default=None, help="random weights of this architecture (chaptering.models.SHAPES)")
    ap.add_argument("--set", action="append", default=[], help="section.key=value overrides")
    args = ap.parse_args()
    from chaptering.train import choose_backend, cuda_available, train_sft  # imports no ML library

    overrides = args.set + [f"train.max_steps={args.steps}", "train.save_steps=100000"]
    if args.backend:
        overrides.append(f"train.backend={args.backend}")
    if args.base:
        overrides.append(f"model.base={args.base}")
    settings = apply_overrides(get_settings(), overrides).prepare()
    cfg = settings.train
    backend = choose_backend(cfg.backend)
    if backend == "unsloth":
        import unsloth  # noqa: F401 - before transformers/TRL, or Unsloth cannot patch them
    from datasets import Dataset

    from chaptering.datasets import Windowing, sample_rows, sft_rows
    from chaptering.io import read_transcripts
    from chaptering.models import load_tokenizer, make_random_model, resolve_base

    base = resolve_base(settings.model.base, settings.cache_dir)
    if args.shape:
        base = str(make_random_model(settings.cache_dir / "shapes" / args.shape, base, args.shape))
    win = Windowing(load_tokenizer(base), settings.model.context_tokens, settings.model.max_new_tokens)
    transcripts = [t for p in sorted((PROJECT_ROOT / "data" / "train").glob("*.jsonl")) for t in read_transcripts(p)]
    rows = Dataset.from_list(list(sft_rows(transcripts, win)))
    rows = sample_rows(rows, cfg.max_steps * cfg.batch_size * cfg.grad_accum, cfg.seed, cfg.single_chapter_weight,
                       cfg.balance_sources, cfg.source_shares)
    device = "cuda" if cuda_available() else "cpu"
    gflops = matmul_gflops(device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_sft(rows, base, Path(tmp), cfg, backend)
    n_params = sum(p.numel() for p in __import__("safetensors.torch", fromlist=["x"]).load_file(
        str(Path(base) / "model.safetensors")).values()) if (Path(base) / "model.safetensors").is_file() else None
    tok_s = result.tokens_seen / result.seconds  # the whole stage: model load and compilation included
    (t_a, n_a), (t_b, n_b) = result.progress[min(2, len(result.progress) - 1)], result.progress[-1]
    steady = (n_b - n_a) / (t_b - t_a) if t_b > t_a else tok_s  # after the first two steps
    report = {
        "base": args.shape or settings.model.base, "backend": backend, "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None, "steps": result.steps,
        "grad_accum": cfg.grad_accum, "max_length": cfg.max_length, "lora_r": cfg.lora_r,
        "seconds": result.seconds, "seconds_per_step": round(result.seconds / max(1, result.steps), 2),
        "tokens_seen": result.tokens_seen, "tokens_per_s": round(tok_s, 1),
        "tokens_per_s_steady": round(steady, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 2) if device == "cuda" else None,
        "matmul_gflops": round(gflops, 1), "params": n_params,
        "loss_first_last": [result.first_loss, result.last_loss],
    }
    if n_params:
        report["mfu_6n"] = round(6 * n_params * steady / (gflops * 1e9), 3)
        report["mfu_4n"] = round(4 * n_params * steady / (gflops * 1e9), 3)
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"train-{backend}-{device}-{Path(str(args.shape or settings.model.base)).name}.json"
    (OUT / name).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
