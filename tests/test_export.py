"""`chaptering export` on the tiny model: the GGUF is the merged adapter in llama.cpp's layout (its logits
and tokens are the PyTorch model's), the ONNX encoder gives the PyTorch encoder's vectors, the exported
folder places exactly the PyTorch bundle's chapters, the runtime imports no torch, a tampered folder is
refused, and a registered version's export is logged back to MLflow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chaptering.config import PROJECT_ROOT, ModelSettings, Settings

pytestmark = pytest.mark.embedding
QUANTS = ["f32", "q8_0"]


def _needs(*modules: str) -> None:
    for m in modules:
        pytest.importorskip(m)


@pytest.fixture(scope="session")
def trained_adapter(adapter_dir: Path, tmp_path_factory) -> Path:
    """The conftest adapter with random (non-zero) LoRA B matrices: merging it changes the weights."""
    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("trained-adapter") / "adapter"
    shutil.copytree(adapter_dir, out)
    weights = load_file(str(out / "adapter_model.safetensors"))
    g = torch.Generator().manual_seed(1)
    for k, v in weights.items():
        if "lora_B" in k:
            weights[k] = torch.randn(v.shape, generator=g) * 0.05
    save_file(weights, str(out / "adapter_model.safetensors"))
    return out


@pytest.fixture(scope="session")
def bundle(fitted_boundary, trained_adapter, tmp_path_factory) -> Path:
    from chaptering.boundary_chapterer import write_bundle

    model, _, _ = fitted_boundary
    return write_bundle(tmp_path_factory.mktemp("bundle") / "bundle", model, trained_adapter)


@pytest.fixture(scope="session")
def exported(bundle: Path, tiny_dir: Path, tmp_path_factory) -> Path:
    _needs("onnxruntime", "onnx", "gguf", "onnxmltools")
    from chaptering.export import export_bundle

    cache = tmp_path_factory.mktemp("export-cache")
    out = tmp_path_factory.mktemp("export") / "tiny-edge"
    export_bundle(bundle, str(tiny_dir), out, QUANTS, cache)
    return out


@pytest.fixture(scope="session")
def merged(trained_adapter: Path, tiny_dir: Path, tmp_path_factory):
    from chaptering.models import load_adapted

    return load_adapted(str(tiny_dir), trained_adapter, tmp_path_factory.mktemp("merge-cache"), "float32")


@pytest.fixture
def settings(tmp_path: Path, tiny_dir: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state",
                    model=ModelSettings(base=str(tiny_dir), context_tokens=512, max_new_tokens=16)).prepare()


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _predict_without_torch(folder: Path, src: Path, out: Path, *args: str) -> list[dict]:
    """`python -m chaptering.edge FOLDER SRC --out OUT --threads 1 ARGS` in a fresh process, which must end
    with exit code 0 and without torch, transformers, peft, mlflow or lightgbm imported (the trees run as
    ONNX); -> the predicted rows."""
    code = ("import sys, runpy; sys.argv = ['x', *sys.argv[1:]];"
            "rc = 0\ntry:\n    runpy.run_module('chaptering.edge', run_name='__main__')\nexcept SystemExit as e:\n"
            "    rc = e.code\nheavy = [m for m in ('torch', 'transformers', 'peft', 'mlflow', 'lightgbm') if m in sys.modules]\n"
            "assert rc == 0 and not heavy, (rc, heavy)")
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(src), "--out", str(out), "--threads", "1",
                           *args], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


# --- the GGUF --------------------------------------------------------------------------------------


def test_gguf_holds_the_merged_weights_in_llama_cpp_layout(exported: Path, merged):
    import gguf
    import numpy as np

    from chaptering.export.gguf_llama import _permute

    model, _ = merged
    reader = gguf.GGUFReader(exported / "llm" / "title-f32.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.token")}
    assert fields["general.architecture"] == "llama" and fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert fields["tokenizer.ggml.model"] == "gpt2" and "<|im_start|>" in fields["tokenizer.chat_template"]
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied embeddings: llama.cpp reuses token_embd
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    layer = model.model.layers[0].self_attn
    for name, hf, heads in (("blk.0.attn_q.weight", layer.q_proj.weight, n_head),
                            ("blk.0.attn_k.weight", layer.k_proj.weight, n_kv)):
        want = _permute(hf.detach().numpy(), heads)
        got = np.asarray(tensors[name].data).reshape(want.shape)
        assert np.array_equal(got, want), name
    q8 = {t.name: t for t in gguf.GGUFReader(exported / "llm" / "title-q8_0.gguf").tensors}
    assert q8["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert q8["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    deq = gguf.quants.dequantize(q8["blk.0.attn_v.weight"].data, q8["blk.0.attn_v.weight"].tensor_type)
    v = layer.v_proj.weight.detach().numpy()
    assert np.abs(deq.reshape(v.shape) - v).max() < 0.02 * np.abs(v).max()


@pytest.mark.edge
def test_gguf_logits_and_tokens_are_the_pytorch_models(exported: Path, merged):
    """llama.cpp on the f32 GGUF computes the merged PyTorch model's next-token logits, and its own
    tokenizer (the GGUF vocabulary, merges and pre-tokenizer) splits prompts into the same ids."""
    _needs("llama_cpp")
    import numpy as np
    import torch
    from llama_cpp import Llama

    from chaptering.titles import title_messages

    model, tok = merged
    llm = Llama(model_path=str(exported / "llm" / "title-f32.gguf"), n_ctx=512, logits_all=True, verbose=False)
    for text in ("So, welcome back: today we fix the sink.", "Ünïcödé – “quotes”, 42 emojis 🦙 and\ttabs"):
        prompt = tok.apply_chat_template(title_messages(text)[:2], add_generation_prompt=True, tokenize=False)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        llm.reset()
        llm.eval(ids)
        got = np.array(llm.scores[len(ids) - 1])
        with torch.inference_mode():
            want = model(torch.tensor([ids])).logits[0, -1].numpy()
        assert np.abs(got - want).max() < 1e-3 * max(1.0, np.abs(want).max())


# --- the encoder and the boundaries ----------------------------------------------------------------


def test_onnx_encoder_gives_the_pytorch_vectors(exported: Path):
    _needs("onnxruntime", "tokenizers")
    import numpy as np

    from chaptering.edge.encoder import OnnxEncoder
    from chaptering.embeddings import embed

    texts = ["Okay so next we look at the drain.", "", "um", "word " * 400, "Ünïcödé and émojis 🦙"]
    got = OnnxEncoder(exported / "encoder")(texts)
    want = embed(texts)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


def test_an_int8_encoder_is_smaller_and_stays_close_to_the_pytorch_vectors(exported: Path, tmp_path: Path):
    _needs("onnxruntime", "tokenizers", "onnx")
    import numpy as np

    from chaptering.edge.encoder import OnnxEncoder
    from chaptering.embeddings import embed
    from chaptering.export.encoder import export_encoder

    out = export_encoder(tmp_path / "int8", precision="int8")
    card = json.loads((out / "encoder.json").read_text())
    assert card["precision"] == "int8" and card["check_min_cosine"] >= 0.95
    assert (out / "encoder.onnx").stat().st_size < 0.7 * (exported / "encoder" / "encoder.onnx").stat().st_size
    assert not list(out.glob("*.fp32.onnx"))
    texts = ["Okay so next we look at the drain.", "Now let's install the faucet and test it.", "um"]
    got, want = OnnxEncoder(out)(texts), embed(texts)
    assert np.all(np.sum(got * want, axis=1) > 0.9) and np.abs(got - want).max() > 1e-6  # close, not equal
    with pytest.raises(ValueError, match="int4"):
        export_encoder(tmp_path / "bad", precision="int4")


@pytest.mark.edge
def test_exported_folder_places_the_pytorch_bundles_chapters(exported: Path, bundle: Path, fitted_boundary,
                                                            settings, merged):
    """Same starts on every transcript (the trees and decoder are shared, the features agree), and every
    title the GGUF writes is a greedy continuation under the PyTorch model too."""
    _needs("llama_cpp", "onnxruntime")
    import torch

    from chaptering.edge import load_export
    from chaptering.factory import load_chapterer
    from chaptering.heldout import load_heldout

    _, transcripts, _ = fitted_boundary
    heldout = [t for t in load_heldout(PROJECT_ROOT / "data" / "eval" / "heldout.jsonl")
               if t.meta.get("domain") == "short"][:10]
    torch_path = load_chapterer(str(bundle), settings)
    edge = load_export(exported, "f32", threads=1)
    for t in transcripts[:10] + heldout:
        want, got = torch_path.predict(t), edge.predict(t)
        assert got.boundaries == want.boundaries, t.id
        assert got.meta["titles_written"] + len(got.meta["repairs"]) == len(got.chapters)
    model, _ = merged
    titler = edge.titler
    for text in ("So, welcome back: today we fix the sink.", "Next, the budget for the second quarter."):
        ids = titler.prompt_ids(text)
        out = []
        for token in titler.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, reset=True):
            if token in titler.stop_ids or len(out) >= 8:
                break
            out.append(token)
        with torch.inference_mode():
            logits = model(torch.tensor([ids + out])).logits[0]
        for k, token in enumerate(out):
            row = logits[len(ids) - 1 + k]
            assert float(row.max() - row[token]) < 1e-3, (text, k)  # an argmax up to float noise


@pytest.mark.edge
def test_batched_titles_are_greedy_continuations_of_each_prompt(exported: Path, merged):
    """The batch decoder (one KV sequence per chapter, prompts of different lengths, more prompts than
    sequences) writes for every prompt a greedy continuation under the PyTorch model, as the one-at-a-time
    path did, and stops at a stop token or the token limit."""
    _needs("llama_cpp", "onnxruntime")
    import torch

    from chaptering.edge import load_export
    from chaptering.edge.batch import BatchDecoder, common_prefix

    # the shared prompt start is computed once; each prompt keeps at least one token of its own
    assert common_prefix([[1, 2, 3], [1, 2, 4]]) == 2 and common_prefix([[1, 2], [1, 2, 3]]) == 1
    assert common_prefix([[5], [5, 6]]) == 0 and common_prefix([[1, 2], [3, 2]]) == 0
    titler = load_export(exported, "f32", threads=1).titler
    texts = ["So, welcome back: today we fix the sink.", "Next, the budget for the second quarter.",
             "Right. " * 40 + "And that is how the pump works.", "Questions?", "Let us look at the results " * 3]
    prompts = [titler.prompt_ids(x) for x in texts]
    decoder = BatchDecoder(titler.llm, n_seq=2, n_ctx=2 * (max(map(len, prompts)) + 8), threads=1)
    assert len(decoder._groups(prompts, 8)) >= 3  # more prompts than sequences: several passes
    answers = decoder.generate(prompts, 8, titler.stop_ids)
    model, _ = merged
    for ids, out in zip(prompts, answers):
        assert 1 <= len(out) <= 8 and not set(out) & titler.stop_ids
        with torch.inference_mode():
            logits = model(torch.tensor([ids + out])).logits[0]
        for k, token in enumerate(out):
            row = logits[len(ids) - 1 + k]
            assert float(row.max() - row[token]) < 1e-3, (ids[-3:], k)
        if len(out) < 8:  # it stopped: the next greedy token is a stop token
            assert int(logits[-1].argmax()) in titler.stop_ids
    assert titler._batch(texts) == titler._batch(texts)  # the KV cache is cleared between calls
    decoder.close()
    titler.resize(2)  # the sizing rule lives in the titler: cells for 2 typical prompts, at least n_ctx
    assert (titler.batch_size, titler.decoder.n_seq) == (2, 2)
    assert titler.decoder.n_ctx == max(titler.n_ctx, 2 * titler.cells_per_title)
    assert len(titler._batch(texts)) == len(texts)
    with pytest.raises(ValueError, match="does not fit"):
        titler.decoder.generate([[1] * (titler.decoder.n_ctx + 1)], 8, titler.stop_ids)


@pytest.mark.edge
def test_runtime_imports_no_torch(exported: Path, tmp_path: Path):
    _needs("llama_cpp", "onnxruntime")
    from chaptering.io import write_jsonl

    src = tmp_path / "in.jsonl"
    write_jsonl(src, [json.loads(line) for line in
                      (PROJECT_ROOT / "data" / "train" / "vidchapters-short.jsonl").read_text().splitlines()[:2]])
    rows = _predict_without_torch(exported, src, tmp_path / "pred.jsonl", "--quant", "q8_0")
    assert len(rows) == 2 and all(r["chapters"][0]["start_segment"] == 0 for r in rows)
    assert "(edge:q8_0)" in rows[0]["model"]


# --- the boundary trees as ONNX ---------------------------------------------------------------------


def test_onnx_trees_score_every_line_as_lightgbm_does(exported: Path, bundle: Path, fitted_boundary):
    import numpy as np

    from chaptering.boundary import BoundaryModel
    from chaptering.edge.trees import TreeScorer

    _, transcripts, cache = fitted_boundary
    trees = BoundaryModel.load(bundle / "boundary")
    m = _manifest(exported)["boundary"]
    assert m["trees"] == "boundary/boundary.onnx" and m["max_abs_diff"] <= 1e-5 and m["check_rows"] > 1000
    onnx = TreeScorer.load(exported / m["trees"], threads=1)
    x = np.vstack([trees.features(t, cache) for t in transcripts])
    want, got = trees.booster.predict(x), onnx.predict(x)
    assert got.shape == want.shape and float(np.max(np.abs(got - want))) < 1e-5
    assert float(np.std(want)) > 0.01  # the trees are not constant: the comparison can fail


def test_an_export_from_before_the_onnx_trees_still_runs_on_lightgbm(exported: Path, fitted_boundary,
                                                                  tmp_path: Path):
    _needs("llama_cpp", "onnxruntime")
    from chaptering.edge import load_export
    from chaptering.edge.trees import TreeScorer

    old = tmp_path / "old"
    shutil.copytree(exported, old)
    m = _manifest(old)
    del m["boundary"]["trees"], m["files"]["boundary/boundary.onnx"]
    (old / "boundary" / "boundary.onnx").unlink()
    (old / "manifest.json").write_text(json.dumps(m))
    _, transcripts, _ = fitted_boundary
    before, now = load_export(old, "f32", threads=1), load_export(exported, "f32", threads=1)
    assert isinstance(now.boundary.booster, TreeScorer) and not isinstance(before.boundary.booster, TreeScorer)
    for t in transcripts[:5]:
        assert before.boundary.starts(t)[0] == now.boundary.starts(t)[0], t.id


# --- the manifest ----------------------------------------------------------------------------------


def test_manifest_lists_every_file_and_the_calibration(exported: Path, bundle: Path):
    from chaptering.boundary import BoundaryModel
    from chaptering.edge.manifest import sha256_file
    from chaptering.titles import TITLE_PROMPT_VERSION

    m = _manifest(exported)
    files = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == files
    assert all(sha256_file(exported / rel) == e["sha256"] for rel, e in m["files"].items())
    assert m["prompt_version"] == TITLE_PROMPT_VERSION
    assert m["calibration"] == BoundaryModel.load(bundle / "boundary").decoder.to_dict()
    assert m["llm"]["default"] == "f32" and set(m["llm"]["files"]) == set(QUANTS)
    assert m["versions"]["gguf"] == "0.19.0"


@pytest.mark.edge
def test_a_tampered_or_stale_export_is_refused(exported: Path, tmp_path: Path):
    _needs("llama_cpp", "onnxruntime")
    from chaptering.edge import load_export

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    card = copy / "boundary" / "boundary.json"
    card.write_text(card.read_text().replace('"kind"', '"kinx"'))  # same size, other bytes
    load_export(copy)  # sizes only: loads
    with pytest.raises(ValueError, match=r"boundary\.json: sha256"):
        load_export(copy, checksums=True)
    (copy / "llm" / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"tokenizer\.json: \d+ bytes"):
        load_export(copy)
    shutil.copy2(exported / "llm" / "tokenizer.json", copy / "llm" / "tokenizer.json")
    m = _manifest(copy)
    (copy / "manifest.json").write_text(json.dumps({**m, "prompt_version": "title-v0"}))
    with pytest.raises(ValueError, match="export the model again"):
        load_export(copy)
    with pytest.raises(ValueError, match="no 'q4_k_m' title LM"):
        (copy / "manifest.json").write_text(json.dumps(m))
        load_export(copy, "q4_k_m")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_export(tmp_path)


# --- the command line and the registry -------------------------------------------------------------


@pytest.mark.edge
def test_cli_exports_a_folder_and_predicts_from_it(bundle: Path, tiny_dir: Path, tmp_path: Path, monkeypatch):
    _needs("llama_cpp", "onnxruntime")
    from typer.testing import CliRunner

    from chaptering import config
    from chaptering.cli import app

    monkeypatch.setenv("CHAPTERING_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CHAPTERING_MODEL__BASE", str(tiny_dir))
    config.get_settings.cache_clear()
    try:
        cli, out = CliRunner(), tmp_path / "edge"
        bad = cli.invoke(app, ["export", str(bundle), "--out", str(out), "--quant", "q3_q"])
        assert bad.exit_code == 2 and "q3_q" in bad.output
        bad = cli.invoke(app, ["export", str(bundle), "--out", str(out), "--encoder", "int4"])
        assert bad.exit_code == 2 and "int4" in bad.output
        done = cli.invoke(app, ["export", str(bundle), "--out", str(out), "--quant", "q8_0", "--encoder", "int8"])
        assert done.exit_code == 0, done.output
        assert _manifest(out)["llm"]["files"] == {"q8_0": "llm/title-q8_0.gguf"}
        assert _manifest(out)["encoder"] == {"precision": "int8"}
        pred = tmp_path / "pred.jsonl"
        demo = PROJECT_ROOT / "data" / "demo" / "seed-home-tour.vtt"
        done = cli.invoke(app, ["predict", str(demo), "--out", str(pred), "--model", f"export:{out}"])
        assert done.exit_code == 0, done.output
        (row,) = [json.loads(line) for line in pred.read_text().splitlines()]
        assert row["chapters"][0]["start_segment"] == 0 and all(c["title"] for c in row["chapters"])
        missing = cli.invoke(app, ["predict", str(demo), "--out", str(pred), "--model", f"export:{tmp_path}/nope"])
        assert missing.exit_code == 2 and "manifest.json" in missing.output
    finally:
        config.get_settings.cache_clear()


def test_a_registered_version_exports_and_is_logged_back(bundle: Path, settings: Settings, tmp_path: Path):
    _needs("onnxruntime", "onnx")
    from mlflow import MlflowClient

    from chaptering import registry
    from chaptering.export import VERSION_TAG, export_model

    registry.configure(settings)
    cand = registry.log_candidate(bundle, settings.model.base, None, params={}, tags={}, plots=[], settings=settings)
    out = tmp_path / "v"
    manifest = export_model(str(cand.version), out, ["q8_0"], settings)
    assert manifest["source"]["model"] == f"models:/{settings.registered_model}/{cand.version}"
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    mv = client.get_model_version(settings.registered_model, str(cand.version))
    tag = json.loads(mv.tags[VERSION_TAG])
    assert tag["quants"] == ["q8_0"] and tag["artifact"] == f"runs:/{mv.run_id}/edge/q8_0"
    logged = {f.path for f in client.list_artifacts(mv.run_id, "edge/q8_0")}
    assert {"edge/q8_0/manifest.json", "edge/q8_0/llm", "edge/q8_0/encoder", "edge/q8_0/boundary"} <= logged
    with pytest.raises(LookupError):
        export_model("99", tmp_path / "none", ["q8_0"], settings)


def test_the_service_runs_a_version_through_its_logged_export(bundle: Path, settings: Settings, tmp_path: Path):
    """serve.export_quant: a version with that export is served by the edge runtime from the registry's
    copy; one without it (or another quant) still serves, on PyTorch."""
    _needs("onnxruntime", "onnx", "gguf", "onnxmltools", "llama_cpp")
    from chaptering import registry
    from chaptering.export import export_model
    from chaptering.io import read_transcripts
    from chaptering.serve.holder import _default_loader

    registry.configure(settings)
    exported = registry.log_candidate(bundle, settings.model.base, None, params={}, tags={}, plots=[],
                                      settings=settings)
    plain = registry.log_candidate(bundle, settings.model.base, None, params={}, tags={}, plots=[],
                                   settings=settings)
    export_model(str(exported.version), tmp_path / "out", ["q8_0"], settings)
    shutil.rmtree(tmp_path / "out")  # the service reads the registry's copy, not the folder written
    spec = f"models:/{settings.registered_model}/{exported.version}"

    folder = registry.fetch_export(spec, "q8_0", settings)
    assert folder is not None and (folder / "manifest.json").is_file() and (folder / "llm").is_dir()
    assert str(folder).startswith(str(settings.cache_dir))
    assert registry.fetch_export(spec, "int8", settings) is None
    assert registry.fetch_export(f"models:/{settings.registered_model}/{plain.version}", "q8_0", settings) is None

    serving = settings.model_copy(update={"serve": settings.serve.model_copy(update={"export_quant": "q8_0"})})
    edge = _default_loader(spec, serving)
    assert edge.name == f"{spec} (edge:q8_0)"
    t = read_transcripts(PROJECT_ROOT / "data" / "eval" / "heldout.jsonl")[0]
    assert edge.predict(t).chapters
    other = f"models:/{settings.registered_model}/{plain.version}"
    assert _default_loader(other, serving).name == other  # no export logged: PyTorch
    assert _default_loader(spec, settings).name == spec  # export_quant unset: PyTorch


def test_an_export_logged_after_the_promotion_replaces_the_pytorch_champion(bundle: Path, settings: Settings,
                                                                             tmp_path: Path):
    """The alias moves first (the nightly), the export comes after (`chaptering export champion`): the
    service serves the new champion on PyTorch meanwhile, then switches once to its export."""
    _needs("onnxruntime", "onnx", "gguf", "onnxmltools", "llama_cpp")
    from chaptering import registry
    from chaptering.export import export_model
    from chaptering.serve.holder import ModelHolder, _default_loader

    registry.configure(settings)
    v = str(registry.log_candidate(bundle, settings.model.base, None, params={}, tags={}, plots=[],
                                   settings=settings).version)
    registry.promote(v, settings)
    serving = settings.model_copy(update={"serve": settings.serve.model_copy(update={"export_quant": "q8_0"})})
    holder = ModelHolder(serving, _default_loader)
    assert holder.reload_now() and holder.live.version == v
    assert holder.live.name == f"models:/{settings.registered_model}/{v}"  # no export yet: PyTorch
    assert not holder.reload_now()
    export_model("champion", tmp_path / "out", ["q8_0"], settings)
    assert holder.reload_now() and holder.live.version == v
    assert holder.live.name.endswith("(edge:q8_0)")
    assert not holder.reload_now()  # switched once


def test_the_nightly_exports_a_new_champion_when_asked(bundle: Path, settings: Settings):
    _needs("onnxruntime", "onnx", "gguf", "onnxmltools")
    from chaptering import registry
    from chaptering.config import ExportSettings
    from chaptering.pipeline import Decision, export_stage

    registry.configure(settings)
    v = str(registry.log_candidate(bundle, settings.model.base, None, params={}, tags={}, plots=[],
                                   settings=settings).version)
    spec = f"models:/{settings.registered_model}/{v}"
    asked = settings.model_copy(update={"export": ExportSettings(on_promote=["q8_0"])})
    assert export_stage(asked, Decision(False, v, ["refused"])) == {"exported": False}  # only champions
    assert export_stage(settings, Decision(True, v, [])) == {"exported": False}  # not asked for
    assert registry.export_quants(spec, settings) == []
    done = export_stage(asked, Decision(True, v, []))
    assert done["exported"] and done["quants"] == ["q8_0"] and done["bytes"] > 0
    assert registry.export_quants(spec, settings) == ["q8_0"]
    assert not list(settings.state_dir.glob("export-*"))  # the folder lives in MLflow, not left on disk
    failed = export_stage(settings.model_copy(update={"export": ExportSettings(on_promote=["q9_9"])}),
                          Decision(True, v, []))
    assert not failed["exported"] and "q9_9" in failed["error"]  # reported, not raised
    assert registry.export_quants(spec, settings) == ["q8_0"]  # the logged export is untouched


# --- the int8 ONNX title LM (export/onnx_llm.py, edge/onnx_decoder.py) ---------------------------

PROMPT_TEXTS = ["So, welcome back: today we fix the sink.", "Next, the budget for the second quarter.",
                "Right. " * 40 + "And that is how the pump works.", "Questions?", "Let us look at the results " * 3]


def _prompt_batches(tok) -> list:
    from chaptering.titles import title_messages

    return [tok.apply_chat_template(title_messages(x)[:2], add_generation_prompt=True, return_tensors="pt",
                                    return_dict=True) for x in PROMPT_TEXTS]


def test_smoothing_flattens_activations_without_changing_the_model(merged):
    """SmoothQuant's folding is exact in fp32 (same logits) and narrows the spread of the per-channel
    activation maxima every projection sees: what lets one int8 scale per tensor keep the titles."""
    import copy

    import torch

    from chaptering.export.onnx_llm import activation_maxima, smooth

    model, tok = merged
    smoothed = copy.deepcopy(model)
    batches = _prompt_batches(tok)
    before = activation_maxima(smoothed, batches)
    smooth(smoothed, before)
    after = activation_maxima(smoothed, batches)
    assert set(before) == set(after) and len(before) == 4 * model.config.num_hidden_layers

    def spread(x):
        return float(x.max() / x.clamp(min=1e-6).min())

    assert all(spread(after[k]) < spread(before[k]) for k in before), \
        [(k, spread(before[k]), spread(after[k])) for k in before]
    with torch.inference_mode():
        for batch in batches:
            assert torch.allclose(model(**batch).logits, smoothed(**batch).logits, atol=1e-4)


def test_smoothing_is_exact_with_qkv_biases():
    """Qwen2-style projections carry biases: v_proj's bias takes the 1/s its rows take, or o_proj's
    input changes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from chaptering.export.onnx_llm import activation_maxima, smooth

    cfg = AutoConfig.for_model("qwen2", vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    batches = [{"input_ids": torch.randint(0, 300, (1, 20))} for _ in range(3)]
    with torch.inference_mode():
        before = [model(**b).logits for b in batches]
    smooth(model, activation_maxima(model, batches))
    with torch.inference_mode():
        for b, want in zip(batches, before):
            assert torch.allclose(model(**b).logits, want, atol=1e-4)


@pytest.fixture(scope="session")
def onnx_fp32(merged, tmp_path_factory):
    """A tiny Llama whose greedy answers depend on the prompt (the merged tiny model's projections redrawn
    at unit gain: at init scale every prompt continues with the same newline), as the unquantised ONNX
    title graph: its greedy tokens must be PyTorch's. -> (graph, info, model, tokenizer)."""
    _needs("onnxruntime", "onnx", "onnxruntime_genai", "onnx_ir")
    import copy

    import torch

    from chaptering.export.onnx_llm import write_onnx_llm

    model, tok = merged
    model = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    work = tmp_path_factory.mktemp("onnx-llm")
    model.save_pretrained(work / "merged", safe_serialization=True)
    tok.save_pretrained(work / "merged")
    info = write_onnx_llm(work / "merged", work / "out" / "title.onnx", work, quantize=False)
    return work / "out" / "title.onnx", info, model, tok


@pytest.mark.edge
def test_onnx_decoder_writes_pytorch_greedy_tokens_for_prompts_of_any_length(onnx_fp32):
    """Prompts of different lengths, prefilled alone after a shared prefix and then decoded together in
    right-padded caches (more prompts than rows): every answer is the PyTorch model's greedy continuation,
    and an answer shorter than the limit ended on a stop token."""
    import torch

    from chaptering.edge.onnx_decoder import OnnxDecoder

    graph, info, model, tok = onnx_fp32
    assert info["precision"] == "fp32" and info["head_dim"] == 16 and info["kv_heads"] == 2
    prompts = [b["input_ids"][0].tolist() for b in _prompt_batches(tok)]
    assert len({len(p) for p in prompts}) > 2
    stop = {int(tok.eos_token_id)}
    decoder = OnnxDecoder(graph, info["head_dim"], threads=1, n_seq=2)
    answers = decoder.generate(prompts, 8, stop)
    assert len({tuple(a) for a in answers}) == len(answers)  # the answers depend on the prompts
    assert decoder.generate(prompts, 8, stop) == answers  # nothing carried over between calls
    for ids, out in zip(prompts, answers):
        assert len(out) <= 8 and not set(out) & stop
        with torch.inference_mode():
            logits = model(torch.tensor([ids + out])).logits[0]
        for k, token in enumerate(out):
            row = logits[len(ids) - 1 + k]
            assert float(row.max() - row[token]) < 1e-4, (ids[-3:], k)
        if len(out) < 8:
            assert int(logits[-1].argmax()) in stop
    one_by_one = [OnnxDecoder(graph, info["head_dim"], threads=1, n_seq=1).generate([p], 8, stop)[0]
                  for p in prompts]
    assert one_by_one == answers
    # Rows that end early leave the batch (the rest move into smaller caches) and the others go on as
    # before: each answer is the full one cut where `settled` first holds, in any pass width.
    def settled(a: list[int]) -> bool:
        return len(a) >= 1 + a[0] % 7

    want = [next(a[:k] for k in range(1, len(a) + 1) if settled(a[:k])) if any(
        settled(a[:k]) for k in range(1, len(a) + 1)) else a for a in answers]
    assert len({len(a) for a in want}) > 2  # rows really end at different steps
    for rows in (2, 4, len(prompts)):
        assert OnnxDecoder(graph, info["head_dim"], threads=1, n_seq=rows).generate(prompts, 8, stop, settled) == want


def test_title_settled_stops_only_where_no_continuation_changes_the_kept_title():
    from chaptering.prompt import MAX_TITLE_WORDS, kept_title, title_settled

    kept = kept_title

    ten = " ".join(f"w{i}" for i in range(MAX_TITLE_WORDS))
    cases = ["Intro", "Intro to", "\n\nIntro", "  ", "Intro\n", "Intro\nMore words", f"{ten}", f"{ten} x",
             f"- {ten}", f"{ten} -", f"{ten} - :", f"{ten}- -", f"{ten}- - y"]
    for answer in cases:
        if title_settled(answer):  # then nothing appended may change the title
            for more in (" z", "z", "\nz", " - word", "-"):
                assert kept(answer + more) == kept(answer), (answer, more)
    assert title_settled("Intro\n") and title_settled(f"{ten} x") and title_settled(f"{ten}- - y")
    assert not title_settled("\n\nIntro") and not title_settled(ten) and not title_settled(f"{ten} - :")
    assert not title_settled(f"- {ten}")  # the leading mark is stripped: still ten words


@pytest.mark.edge
def test_int8_graph_keeps_the_pytorch_logits_with_embeddings_read_from_the_int8_head(onnx_fp32, tmp_path: Path):
    """The quantised graph (smoothed, int8 projections, int8 blocks for down_proj and lm_head, embeddings
    decoded from lm_head's blocks, a float16 KV cache) gives last-position logits close to PyTorch's, also
    when a prompt is prefilled after a cached prefix, and holds no fp32 embedding table."""
    import numpy as np
    import onnx
    import torch

    from chaptering.edge.onnx_decoder import OnnxDecoder
    from chaptering.export.onnx_llm import write_onnx_llm

    graph, _, model, tok = onnx_fp32
    info = write_onnx_llm(graph.parent.parent / "merged", tmp_path / "int8.onnx", tmp_path / "work")
    assert info["precision"] == "int8-smoothquant"
    proto = onnx.load(str(tmp_path / "int8.onnx"), load_external_data=False)
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    assert not [i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                and sorted(i.dims) == sorted([vocab, hidden])]
    assert "/model/embed_tokens/GatherCodes" in {n.name for n in proto.graph.node}
    caches = [v for v in list(proto.graph.input) + list(proto.graph.output) if ".key" in v.name or ".value" in v.name]
    assert caches and {v.type.tensor_type.elem_type for v in caches} == {onnx.TensorProto.FLOAT16}
    decoder = OnnxDecoder(tmp_path / "int8.onnx", info["head_dim"], threads=1)
    assert decoder.cache_dtype == "float16"
    for batch in _prompt_batches(tok):
        ids = batch["input_ids"][0].tolist()
        got, _ = decoder._run(np.array([ids], np.int64), np.ones((1, len(ids)), np.int64), decoder._empty(1))
        _, prefix = decoder._run(np.array([ids[:4]], np.int64), np.ones((1, 4), np.int64), decoder._empty(1))
        after, _ = decoder._run(np.array([ids[4:]], np.int64), np.ones((1, len(ids)), np.int64), prefix)
        with torch.inference_mode():
            want = model(torch.tensor([ids])).logits[0, -1].numpy()
        for row in (got[0], after[0]):
            cosine = float(row @ want / (np.linalg.norm(row) * np.linalg.norm(want)))
            assert cosine > 0.995, cosine
    # the embedding rows are lm_head's int8 blocks dequantised: within half a quantisation step of PyTorch's
    import onnxruntime as ort
    from onnx import helper

    full = onnx.load(str(tmp_path / "int8.onnx"))
    nodes = [n for n in full.graph.node if n.name.startswith("/model/embed_tokens/")]
    used = {i for n in nodes for i in n.input}
    sub = helper.make_graph(nodes, "embeddings", [next(i for i in full.graph.input if i.name == "input_ids")],
                            [helper.make_tensor_value_info(nodes[-1].output[0], onnx.TensorProto.FLOAT, None)],
                            [i for i in full.graph.initializer if i.name in used])
    sub_model = helper.make_model(sub, opset_imports=list(full.opset_import))
    ids = np.array([[0, 1, 2, 500, 4000, vocab - 1]], np.int64)
    got = ort.InferenceSession(sub_model.SerializeToString()).run(None, {"input_ids": ids})[0][0]
    table = model.get_input_embeddings().weight.detach().numpy()[ids[0]]
    step = np.abs(table).reshape(len(ids[0]), -1, 32).max(-1, keepdims=True) / 127
    assert (np.abs(got - table).reshape(step.shape[0], -1, 32) <= step / 2 + 1e-7).all()


@pytest.fixture(scope="session")
def exported_int8(bundle: Path, tiny_dir: Path, tmp_path_factory) -> Path:
    _needs("onnxruntime", "onnx", "gguf", "onnxruntime_genai", "onnx_ir")
    from chaptering.export import export_bundle

    out = tmp_path_factory.mktemp("export-int8") / "tiny-edge-int8"
    export_bundle(bundle, str(tiny_dir), out, ["int8", "q8_0"], tmp_path_factory.mktemp("export-int8-cache"))
    return out


@pytest.mark.edge
def test_int8_export_places_the_pytorch_chapters_and_titles_them_without_torch(exported_int8: Path, bundle: Path,
                                                                             fitted_boundary, settings,
                                                                             tmp_path: Path):
    """`--quant int8` writes the smoothed int8 ONNX graph beside the GGUF, the default is the first quant,
    the runtime picks onnxruntime for it, places the PyTorch bundle's chapters and titles every chapter,
    and the device-side CLI runs it with no torch imported."""
    _needs("llama_cpp", "onnxruntime")
    import onnx

    from chaptering.edge import load_export
    from chaptering.edge.titler import GGUFTitler, OnnxTitler
    from chaptering.factory import load_chapterer

    llm = _manifest(exported_int8)["llm"]
    assert llm["default"] == "int8" and llm["files"] == {"int8": "llm/title-int8.onnx", "q8_0": "llm/title-q8_0.gguf"}
    assert llm["onnx"]["precision"] == "int8-smoothquant"
    ops = {n.op_type for n in onnx.load(str(exported_int8 / llm["files"]["int8"]), load_external_data=False).graph.node}
    assert {"MatMulInteger", "MatMulNBits", "GroupQueryAttention", "Slice"} <= ops and "MatMul" not in ops
    edge = load_export(exported_int8, threads=1)
    assert isinstance(edge.titler.result(), OnnxTitler)  # loaded in the background (PendingTitler)
    assert isinstance(load_export(exported_int8, "q8_0", background=False).titler, GGUFTitler)
    torch_path = load_chapterer(str(bundle), settings)
    _, transcripts, _ = fitted_boundary
    for t in transcripts[:5]:
        want, got = torch_path.predict(t), edge.predict(t)
        assert got.boundaries == want.boundaries, t.id
        assert got.meta["titles_written"] + len(got.meta["repairs"]) == len(got.chapters)
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(t.model_dump_json() for t in transcripts[:2]) + "\n")
    rows = _predict_without_torch(exported_int8, src, tmp_path / "pred.jsonl")
    assert len(rows) == 2 and "(edge:int8)" in rows[0]["model"]
