"""A chapterer bundle (boundary/ + adapter/) -> an exported folder that chaptering.edge runs without PyTorch:

  boundary/  the LightGBM text model and its card, as trained (features, calibrated decoder), and the same
             trees as ONNX (export/trees.py), which the runtime scores without lightgbm
  encoder/   MiniLM as ONNX + tokenizer.json (export/encoder.py)
  llm/       the title adapter merged into its base, one GGUF per quantisation, + the adapter's tokenizer.json
  manifest.json  source, versions, prompt version, calibration, stop tokens, chat template, sizes + sha256

The folder is built beside `out` and renamed into place when complete, so a failed export never leaves
a half folder where a runtime would look.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaptering.edge.manifest import FORMAT, MANIFEST_FILE, file_entries
from chaptering.edge.trees import TREES_FILE

_VERSIONED = ("chaptering", "torch", "transformers", "peft", "gguf", "onnx", "onnxruntime", "onnxruntime_genai",
              "onnxmltools", "tokenizers", "lightgbm", "llama_cpp_python", "numpy")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in _VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def export_bundle(bundle: Path, base: str, out: Path, quants: Sequence[str], cache_dir: Path,
                  source: dict[str, Any] | None = None, encoder: str = "fp32") -> dict[str, Any]:
    """Write the exported folder for `bundle` (its adapter on `base`) at `out`; returns the manifest.
    `encoder`: fp32 (the server's chapters exactly) or int8 (smaller and faster, as good; export/encoder.py)."""
    from chaptering.boundary import BoundaryModel
    from chaptering.boundary_chapterer import ADAPTER_DIR, BOUNDARY_DIR, is_bundle
    from chaptering.export.encoder import check_precision, export_encoder
    from chaptering.export.gguf_llama import file_type
    from chaptering.export.onnx_llm import QUANTS as ONNX_QUANTS
    from chaptering.export.trees import export_trees
    from chaptering.titles import TITLE_PROMPT_VERSION

    bundle, out = Path(bundle), Path(out)
    if not is_bundle(bundle):
        raise ValueError(f"{bundle}: not a chapterer bundle (no {BOUNDARY_DIR}/boundary.json)")
    quants = list(dict.fromkeys(quants)) or ["q8_0"]
    check_precision(encoder)
    for q in quants:
        if q not in ONNX_QUANTS:
            file_type(q)  # unknown names fail before minutes of work
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise FileExistsError(f"{out}: exists and is not an export folder; choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    trees = BoundaryModel.load(bundle / BOUNDARY_DIR)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as work:
        tmp = Path(work) / "export"
        shutil.copytree(bundle / BOUNDARY_DIR, tmp / "boundary",
                        ignore=lambda _d, names: [n for n in names if not n.endswith((".txt", ".json"))])
        onnx_trees = export_trees(trees.booster, tmp / "boundary" / TREES_FILE)
        export_encoder(tmp / "encoder", precision=encoder)
        llm = None
        if (bundle / ADAPTER_DIR / "adapter_config.json").is_file():
            llm = export_llm(bundle / ADAPTER_DIR, base, cache_dir, tmp / "llm", quants, Path(work))
        manifest = {
            "format": FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": {"model": f"local:{bundle.name}", "base_model": base, **(source or {})},
            "prompt_version": TITLE_PROMPT_VERSION,
            "calibration": trees.decoder.to_dict(),
            "boundary": {"features": len(trees.card.get("features", [])), "rounds": trees.card.get("rounds"),
                         "val_primary_f1": trees.card.get("val_primary_f1"), **onnx_trees},
            "encoder": {"precision": encoder},
            "llm": llm,
            "versions": versions(),
            "files": file_entries(tmp),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return manifest


def export_llm(adapter: Path, base: str, cache_dir: Path, out: Path, quants: Sequence[str],
               work: Path) -> dict[str, Any]:
    """Merge the LoRA adapter into its base (PEFT merge_and_unload), save it as a plain HF folder and
    convert that to one GGUF per quantisation (`int8`: an ONNX graph for onnxruntime, export/onnx_llm.py);
    the tokenizer.json and chat template travel beside them."""
    from chaptering.export.gguf_llama import write_gguf
    from chaptering.export.onnx_llm import QUANTS as ONNX_QUANTS
    from chaptering.export.onnx_llm import write_onnx_llm
    from chaptering.models import load_adapted
    from chaptering.titles import MAX_TITLE_TOKENS

    model, tok = load_adapted(base, adapter, cache_dir, "float32")
    if not isinstance(tok.chat_template, str) or not tok.chat_template:
        raise ValueError(f"{adapter}: its tokenizer has no chat template; titles are prompted as chat")
    merged = work / "merged"
    model.save_pretrained(str(merged), safe_serialization=True)
    tok.save_pretrained(str(merged))
    stop = model.generation_config.eos_token_id
    stop_ids = sorted({int(i) for i in (stop if isinstance(stop, list) else [stop]) if i is not None}
                      or {int(tok.eos_token_id)})
    del model
    out.mkdir(parents=True)
    files, onnx = {}, None
    for q in quants:
        if q in ONNX_QUANTS:
            files[q] = f"llm/title-{q}.onnx"
            onnx = write_onnx_llm(merged, out / f"title-{q}.onnx", work)
            continue
        files[q] = f"llm/title-{q}.gguf"
        write_gguf(merged, out / f"title-{q}.gguf", q, name=f"chaptering-titles-{q}")
    shutil.copy2(merged / "tokenizer.json", out / "tokenizer.json")
    llm = {"architecture": "llama", "default": quants[0], "files": files, "tokenizer": "llm/tokenizer.json",
           "chat_template": tok.chat_template,
           "special_tokens": {k: str(v) for k, v in tok.special_tokens_map.items() if isinstance(v, str)},
           "stop_ids": stop_ids, "max_new_tokens": MAX_TITLE_TOKENS, "base_model": base}
    if onnx:
        llm["onnx"] = onnx
    _check_prompt_parity(tok, out / "tokenizer.json", llm)
    return llm


def _check_prompt_parity(tok: Any, tokenizer_json: Path, llm: dict[str, Any]) -> None:
    """The edge runtime must feed the GGUF the very ids the PyTorch titler feeds its model: render and
    tokenize one prompt both ways and refuse the export if they differ."""
    from tokenizers import Tokenizer

    from chaptering.edge.titler import render_chat
    from chaptering.titles import title_messages

    msgs = title_messages("So, welcome back. Today: sourdough starters, flour and water – and “patience”.")[:2]
    want = tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
               add_special_tokens=False)["input_ids"]
    edge_tok = Tokenizer.from_file(str(tokenizer_json))
    got = edge_tok.encode(render_chat(llm["chat_template"], msgs, llm["special_tokens"]),
                          add_special_tokens=False).ids
    if list(want) != list(got):
        raise RuntimeError(f"the edge prompt differs from the PyTorch prompt ({len(got)} vs {len(want)} tokens)")
