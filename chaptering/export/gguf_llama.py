"""A Hugging Face Llama folder (config.json, safetensors, tokenizer.json) -> one GGUF file for llama.cpp.

The rules are llama.cpp's own (convert_hf_to_gguf.py, `LlamaModel` and `_set_vocab_gpt2`): tensor names
through gguf's TensorNameMap, Q and K rows permuted back to the interleaved rotary layout llama.cpp
expects, norms and other 1-D tensors kept in F32, a GPT-2 BPE vocabulary with its merges, special token
ids and chat template (gguf.SpecialVocab), and the pre-tokenizer named by hashing how the tokenizer
splits llama.cpp's check text. F32/F16/BF16/Q8_0 are written here with gguf.quants, as the converter
does; the K-quants (q4_k_m, ...) come from llama.cpp's own quantizer (`llama_cpp.llama_model_quantize`)
applied to an F32 file, as `llama-quantize` would.

Only the llama architecture is handled (SmolLM2 and the tiny test model are llama): another architecture
is refused by name rather than written wrong.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# convert_hf_to_gguf.get_vocab_base_pre: the text whose token ids identify a BPE pre-tokenizer.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# sha256(str(ids)) -> llama.cpp pre-tokenizer name, for the BPE tokenizers llama-architecture models use
# (the values are copied from convert_hf_to_gguf.py of llama.cpp as vendored by llama-cpp-python 0.3.36).
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}

DIRECT = ("f32", "f16", "bf16", "q8_0")  # written here, tensor by tensor
VIA_LLAMA_CPP = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
                 "q5_k_s", "q5_k_m", "q6_k")
QUANTS = DIRECT + VIA_LLAMA_CPP


def file_type(quant: str) -> Any:
    """`q4_k_m` -> gguf.LlamaFileType.MOSTLY_Q4_K_M (the numbering llama.h uses too)."""
    import gguf

    if quant not in QUANTS:
        raise ValueError(f"unknown quantisation {quant!r}; choose from {', '.join(QUANTS)}")
    return gguf.LlamaFileType.ALL_F32 if quant == "f32" else gguf.LlamaFileType[f"MOSTLY_{quant.upper()}"]


def write_gguf(model_dir: Path, out: Path, quant: str = "q8_0", name: str = "") -> Path:
    """Convert `model_dir` into the GGUF file `out` at `quant`; returns `out`."""
    model_dir, out = Path(model_dir), Path(out)
    ftype = file_type(quant)
    out.parent.mkdir(parents=True, exist_ok=True)
    if quant in DIRECT:
        _convert(model_dir, out, quant, name)
        return out
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        f32 = _convert(model_dir, Path(tmp) / "model-f32.gguf", "f32", name)
        _llama_quantize(f32, out, int(ftype))
    return out


def _llama_quantize(src: Path, dst: Path, ftype: int) -> None:
    try:
        import llama_cpp
    except ImportError as err:
        raise RuntimeError("K-quants are made by llama.cpp's quantizer: pip install llama-cpp-python "
                           "(or export with --quant q8_0 / f16, written without it)") from err
    import os

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, ftype {ftype}) failed with code {rc}")


def _hparams(model_dir: Path) -> dict[str, Any]:
    config = model_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    hp = json.loads(config.read_text())
    archs = hp.get("architectures") or []
    if hp.get("model_type") != "llama" or (archs and archs[0] != "LlamaForCausalLM"):
        raise ValueError(f"{config}: only the llama architecture is exported (found model_type="
                         f"{hp.get('model_type')!r}, architectures={archs})")
    return hp


def _rope_theta(hp: dict[str, Any]) -> float:
    rope = hp.get("rope_parameters") or hp.get("rope_scaling") or {}
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind not in ("default", None):
        raise ValueError(f"RoPE scaling {kind!r} is not handled by this exporter (only plain RoPE)")
    return float(rope.get("rope_theta", hp.get("rope_theta", 10000.0)))


def _convert(model_dir: Path, out: Path, quant: str, name: str) -> Path:
    import gguf

    hp = _hparams(model_dir)
    n_head, n_kv = int(hp["num_attention_heads"]), int(hp.get("num_key_value_heads") or hp["num_attention_heads"])
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name or model_dir.name)
    writer.add_file_type(int(file_type(quant)))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(int(hp["num_hidden_layers"]))
    writer.add_context_length(int(hp["max_position_embeddings"]))
    writer.add_embedding_length(int(hp["hidden_size"]))
    writer.add_feed_forward_length(int(hp["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(_rope_theta(hp))
    writer.add_layer_norm_rms_eps(float(hp["rms_norm_eps"]))
    writer.add_vocab_size(int(hp["vocab_size"]))
    writer.add_rope_dimension_count(int(hp.get("head_dim") or hp["hidden_size"] // n_head))
    _add_vocab(writer, model_dir, int(hp["vocab_size"]))
    for new_name, data, qtype in _tensors(model_dir, hp, n_head, n_kv, quant):
        writer.add_tensor(new_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_vocab(writer: Any, model_dir: Path, vocab_size: int) -> None:
    """convert_hf_to_gguf's `_set_vocab_gpt2`: token list and types, pre-tokenizer, merges, specials."""
    import gguf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    chk = hashlib.sha256(str(tok.encode(CHECK_TEXT)).encode()).hexdigest()
    if chk not in PRE_TOKENIZERS:
        raise ValueError(f"{model_dir}: unknown BPE pre-tokenizer (check hash {chk}); llama.cpp's "
                         "convert_hf_to_gguf_update.py lists the known ones")
    vocab = tok.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ValueError(f"{model_dir}: tokenizer ids reach {max(vocab.values())}, beyond vocab_size {vocab_size}")
    reverse = {i: t for t, i in vocab.items()}
    added, decoder = tok.get_added_vocab(), tok.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if decoder[i].special or (token.startswith("<|") and token.endswith("|>")):
                types.append(gguf.TokenType.CONTROL)
            else:
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZERS[chk])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(writer)
    if vocab_size == 49152:  # llama.cpp's rule for the 49152-token (SmolLM / granite) vocabulary
        writer.add_add_bos_token(False)


def _permute(w: Any, n_head: int) -> Any:
    """HF's rotary halves -> llama.cpp's interleaved pairs (convert_hf_to_gguf `LlamaModel.permute`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model_dir: Path, hp: dict[str, Any], n_head: int, n_kv: int,
             quant: str) -> Iterator[tuple[str, Any, Any]]:
    """(gguf name, data, ggml type) per tensor, in the file order of the safetensors."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(hp["num_hidden_layers"]))
    wanted = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
              "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]
    tied = bool(hp.get("tie_word_embeddings", False))
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                    continue
                new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if new_name is None:
                    raise ValueError(f"{f}: tensor {name!r} has no llama.cpp name")
                data = st.get_tensor(name).float().numpy()
                if name.endswith(("q_proj.weight", "q_proj.bias")):
                    data = _permute(data, n_head)
                elif name.endswith(("k_proj.weight", "k_proj.bias")):
                    data = _permute(data, n_kv)
                qtype = wanted
                if data.ndim <= 1 or new_name.endswith("_norm.weight"):
                    qtype = gguf.GGMLQuantizationType.F32
                try:
                    packed = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)
                except gguf.QuantError:  # rows not a multiple of the block size: the converter's fallback
                    qtype = gguf.GGMLQuantizationType.F16
                    packed = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)
                yield new_name, packed, qtype
