"""The merged title LM -> an int8 ONNX decoder for onnxruntime (the export's `int8` quantisation).

Why besides GGUF: on this project's x86 CPU (AVX-512 VNNI), llama.cpp prefills SmolLM2 at ~450 tokens/s,
no faster than PyTorch's fp32, while onnxruntime's int8 GEMM (MLAS) does ~1,300 (docs/edge.md). The
title prompt's prefill is most of an answer. But int8 with one activation scale per tensor (what
`quantize_dynamic` computes) ruins a 135M model's titles (3 of 40 identical to fp32), so:

1. SmoothQuant (Xiao et al., 2023), alpha 0.8: per input channel, activation outliers are moved into the
   weights, folded exactly into the RMSNorm weights (q/k/v, gate/up), into up_proj's rows (down_proj)
   and v_proj's rows (o_proj); the fp32 logits do not change.
2. onnxruntime-genai's model builder writes the fp32 graph (Llama layout, GroupQueryAttention with a KV
   cache), the format its runtime and ours (edge/onnx_decoder.py) read.
3. `quantize_dynamic` per output channel on q/k/v/o/gate/up; down_proj and lm_head, whose inputs keep
   outliers smoothing cannot move, become MatMulNBits int8 in blocks of 32 (as q8_0 does), which
   quantises activations per block too.
4. lm_head is sliced to the last position: a prompt's prefill needs one row of logits, not ~200.
5. The KV cache is float16 (GroupQueryAttention reads and writes it so; its inputs and output are cast):
   a title's cache is ~10 MB in fp32 and a pass holds up to 16, the largest part of the runtime's memory.

On 40 held-out chapter prompts the result titles 27 like fp32 PyTorch (q8_0 GGUF: ~70 %), at ~2.7x the
prefill speed of either (bench/edge.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ALPHA = 0.8
BLOCK = 32
# Chapter openings written for calibration (not taken from any dataset): spoken-transcript English of the
# kinds the titler sees. Which channels carry outliers is a property of the model, so a few prompts do.
CALIBRATION = (
    ("okay so welcome back everyone, today we're going to look at how the scheduler decides which job runs "
    "next, and why the queue sometimes stalls when two workers grab the same lease at once"),
    ("Alright, the dough has rested for about an hour now, so let's turn it out onto a floured bench. You "
    "can see the bubbles on the surface, that's the fermentation doing its work."),
    ("PROJECT MANAGER: Let's move on to the budget. Marketing: We looked at the component costs and the "
    "rubber case is over our limit. Industrial Designer: We could go for plastic instead."),
    ("In this lecture we prove that every bounded monotone sequence converges. Recall the definition of a "
    "supremum from last time, and the completeness axiom of the real numbers."),
    ("So here's the thing nobody tells you about Kubernetes operators: the reconcile loop has to be "
    "idempotent. If it runs twice you should end up in exactly the same state."),
    ("hey guys, quick one today, I got the new camera and I want to show you three settings I changed "
    "straight out of the box, starting with the autofocus tracking mode"),
    ("Now let's open the terminal and run the migration. You'll see it prints each revision as it goes, "
    "and if one fails it rolls back to the last good state."),
    ("The second half of the match changed everything. After the substitution in the 60th minute the "
    "midfield finally had someone who could hold the ball under pressure."),
    ("Next up, gradient accumulation. If your GPU can't fit a batch of 64, you run four batches of 16 and "
    "only step the optimizer after the fourth, which gives you the same gradient."),
    ("and that brings us to the question from the chat: does this work on Windows? Short answer, yes, but "
    "you'll need to install the build tools first, and I'll put a link below."),
    ("Welcome to the town council meeting of March 4th. First item on the agenda is the road repair "
    "schedule, then we'll hear public comments on the new parking rules."),
    ("The painting was finished in 1889, while he was staying at the asylum. Look at the brushwork in the "
    "sky: those swirls are thick layers of paint applied straight from the tube."),
)


QUANTS = ("int8",)


def write_onnx_llm(merged: Path, out: Path, work: Path, quantize: bool = True) -> dict[str, Any]:
    """`merged` (an HF Llama folder) -> the graph `out` (+ `out`.data beside it); returns what the runtime
    needs to know (head_dim, kv heads, layers). `quantize=False` keeps fp32 (tests compare it to PyTorch)."""
    import json

    merged, out, work = Path(merged), Path(out), Path(work) / "onnx"
    source = work / "smoothed" if quantize else merged
    if quantize:
        smooth_folder(merged, source)
    fp32 = work / "fp32"
    _build_fp32(source, fp32, work / "builder-cache")
    graph = _load(fp32 / "model.onnx")
    if quantize:
        graph = _quantize(graph, work / "int8")
        _embeddings_from_int8_head(graph)
        _fp16_cache(graph)
    _last_position_logits(graph)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(graph, out)
    cfg = json.loads((source / "config.json").read_text())
    return {"layers": int(cfg["num_hidden_layers"]), "kv_heads": int(cfg["num_key_value_heads"]),
            "head_dim": int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]),
            "precision": "int8-smoothquant" if quantize else "fp32"}


def smooth_folder(src: Path, dst: Path, texts: Sequence[str] = CALIBRATION, alpha: float = ALPHA) -> None:
    """Load `src`, smooth it on the title prompts of `texts`, save to `dst` (same outputs in fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chaptering.titles import title_messages

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(src)
    prompts = [tok.apply_chat_template(title_messages(x)[:2], add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True) for x in texts]
    smooth(model, activation_maxima(model, prompts), alpha)
    model.save_pretrained(dst, safe_serialization=True)
    tok.save_pretrained(dst)


def activation_maxima(model: Any, batches: Sequence[Any]) -> dict[str, Any]:
    """Per input channel, the largest |activation| entering each projection over `batches`."""
    import torch

    amax: dict[str, Any] = {}

    def hook(name: str) -> Any:
        def record(_module: Any, inputs: Any) -> None:
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
            amax[name] = torch.maximum(amax[name], x) if name in amax else x
        return record

    names = ("q_proj", "o_proj", "gate_proj", "down_proj")
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if n.endswith(names)]
    try:
        with torch.inference_mode():
            for batch in batches:
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    return amax


def smooth(model: Any, amax: dict[str, Any], alpha: float = ALPHA) -> None:
    """Fold s_j = amax(x_j)^alpha / amax(w_:,j)^(1-alpha) into each projection's input channels: the
    producer of x divides by s, the projection's weight columns multiply by s."""
    import torch

    def ratio(x: Any, w: Any) -> Any:
        return (x.clamp(min=1e-5) ** alpha / w.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)

    def scales(x: Any, weights: Sequence[Any]) -> Any:
        return ratio(x, torch.cat([v.abs() for v in weights], 0).amax(0))

    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    group = heads // kv_heads
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            attn, mlp, at = layer.self_attn, layer.mlp, f"model.layers.{i}."
            s = scales(amax[at + "self_attn.q_proj"], [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            layer.input_layernorm.weight.div_(s)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                proj.weight.mul_(s)
            s = scales(amax[at + "mlp.gate_proj"], [mlp.gate_proj.weight, mlp.up_proj.weight])
            layer.post_attention_layernorm.weight.div_(s)
            mlp.gate_proj.weight.mul_(s)
            mlp.up_proj.weight.mul_(s)
            # down_proj reads silu(gate) * up, linear in up: up_proj's output rows carry 1/s.
            s = scales(amax[at + "mlp.down_proj"], [mlp.down_proj.weight])
            mlp.up_proj.weight.div_(s[:, None])
            if getattr(mlp.up_proj, "bias", None) is not None:
                mlp.up_proj.bias.div_(s)
            mlp.down_proj.weight.mul_(s)
            # o_proj's input (head h, dim d) is attention over v head h // group, linear in v: one scale
            # per (kv head, dim), shared by the query heads of the group.
            x = amax[at + "self_attn.o_proj"].view(kv_heads, group, head_dim).amax(1)
            s = ratio(x, attn.o_proj.weight.abs().amax(0).view(kv_heads, group, head_dim).amax(1))
            attn.v_proj.weight.div_(s.reshape(-1)[:, None])
            if attn.v_proj.bias is not None:  # Qwen2-style q/k/v biases: v's output rows carry 1/s too
                attn.v_proj.bias.div_(s.reshape(-1))
            attn.o_proj.weight.mul_(s[:, None, :].expand(kv_heads, group, head_dim).reshape(-1))


def _build_fp32(model_dir: Path, out: Path, cache: Path) -> None:
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    args = (None, str(model_dir), str(out), "fp32", "cpu", str(cache))
    create_model(*args, **parse_extra_options(*args, []))


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _save(graph: Any, path: Path) -> None:
    import onnx

    onnx.save(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{path.name}.data", size_threshold=1024)
    (path.parent / f"{path.name}.data").chmod(0o644)  # onnx creates it private; the folder ships to others


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizers log one INFO line per tensor on the root logger (hundreds per export)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize(graph: Any, work: Path) -> Any:
    """Per-channel dynamic int8 on every projection but down_proj and lm_head; those two as int8 blocks."""
    from onnxruntime.quantization import QuantType, matmul_nbits_quantizer, quant_utils, quantize_dynamic

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    work.mkdir(parents=True, exist_ok=True)
    blockwise = [n.name for n in graph.graph.node if n.op_type == "MatMul"
                 and ("/mlp/down_proj/" in n.name or n.name.startswith("/lm_head/"))]
    _save(graph, work / "fp32.onnx")
    config = matmul_nbits_quantizer.DefaultWeightOnlyQuantConfig(
        block_size=BLOCK, is_symmetric=True, accuracy_level=4, quant_format=quant_utils.QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",), bits=8)
    with _quiet_root_logger():
        quantize_dynamic(str(work / "fp32.onnx"), str(work / "dynamic.onnx"), per_channel=True,
                         op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         use_external_data_format=True, nodes_to_exclude=blockwise)
        quantizer = matmul_nbits_quantizer.MatMulNBitsQuantizer(_load(work / "dynamic.onnx"),
                                                                nodes_to_include=blockwise, algo_config=config)
        quantizer.process()
    return quantizer.model.model


def _embeddings_from_int8_head(graph: Any) -> None:
    """The embeddings are tied to lm_head: read them from lm_head's int8 blocks instead of an fp32 copy
    (113 MB for SmolLM2, and onnxruntime would fold the Transpose into another 113 MB at load).
    row v = (code - 128) * scale per block of 32, as MatMulNBits dequantises it (symmetric 8-bit)."""
    from onnx import TensorProto, helper

    nodes = list(graph.graph.node)
    head = next(n for n in nodes if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/"))
    codes, scales = head.input[1], head.input[2]
    gather = next(n for n in nodes if n.name == "/model/embed_tokens/Gather")
    transpose = next((n for n in nodes if n.output[0] == gather.input[0] and n.op_type == "Transpose"), None)
    if transpose is None:  # untied embeddings: nothing to share
        return
    ids, at = gather.input[1], nodes.index(gather)
    graph.graph.initializer.extend([helper.make_tensor("embed_zero_point", TensorProto.FLOAT, [], [128.0]),
                                    helper.make_tensor("embed_last_axis", TensorProto.INT64, [1], [-1]),
                                    helper.make_tensor("embed_shape", TensorProto.INT64, [3], [0, 0, -1])])
    new = [helper.make_node("Gather", [codes, ids], ["embed_codes"], name="/model/embed_tokens/GatherCodes"),
           helper.make_node("Cast", ["embed_codes"], ["embed_codes_f"], to=TensorProto.FLOAT,
                            name="/model/embed_tokens/Cast"),
           helper.make_node("Sub", ["embed_codes_f", "embed_zero_point"], ["embed_centred"],
                            name="/model/embed_tokens/Sub"),
           helper.make_node("Gather", [scales, ids], ["embed_scales"], name="/model/embed_tokens/GatherScales"),
           helper.make_node("Unsqueeze", ["embed_scales", "embed_last_axis"], ["embed_scales_1"],
                            name="/model/embed_tokens/Unsqueeze"),
           helper.make_node("Mul", ["embed_centred", "embed_scales_1"], ["embed_blocks"],
                            name="/model/embed_tokens/Mul"),
           helper.make_node("Reshape", ["embed_blocks", "embed_shape"], [gather.output[0]],
                            name="/model/embed_tokens/Reshape")]
    for node in (gather, transpose):
        graph.graph.node.remove(node)
    for k, node in enumerate(new):
        graph.graph.node.insert(at - 1 + k, node)
    fp32 = transpose.input[0]
    if not any(fp32 in n.input for n in graph.graph.node):
        graph.graph.initializer.remove(next(i for i in graph.graph.initializer if i.name == fp32))


def _fp16_cache(graph: Any) -> None:
    """past/present caches as float16: each GroupQueryAttention takes its packed q/k/v and the rotary
    tables in float16 and its output is cast back to float32 for o_proj."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in graph.graph.initializer}
    half: dict[str, str] = {}
    for name in ("cos_cache", "sin_cache"):
        if name in inits:
            table = numpy_helper.to_array(inits[name]).astype("float16")
            graph.graph.initializer.append(numpy_helper.from_array(table, f"{name}_fp16"))
            half[name] = f"{name}_fp16"
    caches = set()
    for node in [n for n in graph.graph.node if n.op_type == "GroupQueryAttention"]:
        at = list(graph.graph.node).index(node)
        cast_in = helper.make_node("Cast", [node.input[0]], [f"{node.name}/qkv_fp16"], to=TensorProto.FLOAT16,
                                   name=f"{node.name}/CastIn")
        node.input[0] = cast_in.output[0]
        for k in range(1, 3):
            if node.input[k]:
                raise ValueError(f"{node.name}: expected packed q/k/v (the builder's layout)")
        for k, name in enumerate(node.input):
            if name in half:
                node.input[k] = half[name]
        out = node.output[0]
        node.output[0] = f"{out}_fp16"
        cast_out = helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT, name=f"{node.name}/CastOut")
        graph.graph.node.insert(at, cast_in)
        graph.graph.node.insert(at + 2, cast_out)
        caches.update([node.input[3], node.input[4], node.output[1], node.output[2]])
    for value in list(graph.graph.input) + list(graph.graph.output):
        if value.name in caches:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    for name in half:
        if not any(name in n.input for n in graph.graph.node):
            graph.graph.initializer.remove(inits[name])


def _last_position_logits(graph: Any) -> None:
    """Insert Slice(-1:) before lm_head: logits [batch, 1, vocab]."""
    from onnx import TensorProto, helper

    head = next(n for n in graph.graph.node if n.name.startswith("/lm_head/"))
    graph.graph.initializer.extend([helper.make_tensor(name, TensorProto.INT64, [1], [value]) for name, value in
                                    (("last_start", -1), ("last_end", 2**62), ("last_axis", 1))])
    cut = helper.make_node("Slice", [head.input[0], "last_start", "last_end", "last_axis"], ["lm_head_last_input"],
                           name="/lm_head/last_position")
    head.input[0] = "lm_head_last_input"
    graph.graph.node.insert(list(graph.graph.node).index(head), cut)
    logits = next(o for o in graph.graph.output if o.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_param = "one"
