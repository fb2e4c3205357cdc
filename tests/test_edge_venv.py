"""The exported folder runs where PyTorch is not installed: a fresh venv with chaptering (--no-deps) and
only the on-device extra runs `python -m chaptering.edge` and places the PyTorch bundle's chapters; the
int8 ONNX title LM runs there without llama-cpp-python too.

Slow the first time (pip downloads the extra; llama-cpp-python compiles unless pip's wheel cache or
state/cache/wheels holds its wheel), about a minute after that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from chaptering.config import PROJECT_ROOT

pytestmark = [pytest.mark.edge, pytest.mark.embedding]

# What the `edge` extra of pyproject.toml holds; used until (or unless) pyproject declares it.
EDGE_REQUIREMENTS = ["numpy==2.4.6", "onnxruntime==1.32.0", "tokenizers==0.23.3",
                     "llama-cpp-python==0.3.36", "pydantic==2.14.4", "srt==3.5.3", "webvtt-py==0.6.0"]
WHEELS = PROJECT_ROOT / "state" / "cache" / "wheels"  # a prebuilt llama-cpp-python wheel, if any


def edge_requirements() -> list[str]:
    extras = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
    return list(extras.get("edge") or EDGE_REQUIREMENTS)


def _run(cmd: list[str], timeout: int, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)


def test_export_runs_in_a_fresh_venv_without_torch(fitted_boundary, adapter_dir, tiny_dir, tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxruntime_genai")
    from chaptering.boundary_chapterer import load_bundle, write_bundle
    from chaptering.export import export_bundle
    from chaptering.io import write_jsonl

    model, transcripts, _ = fitted_boundary
    bundle = write_bundle(tmp_path / "bundle", model, adapter_dir)
    folder = tmp_path / "edge"
    export_bundle(bundle, str(tiny_dir), folder, ["q8_0", "int8"], tmp_path / "cache")
    picked = transcripts[:3]
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [json.loads(t.model_dump_json()) for t in picked])

    venv = tmp_path / "venv"
    py, pip = venv / "bin" / "python", [str(venv / "bin" / "python"), "-m", "pip", "-q"]
    assert _run([sys.executable, "-m", "venv", str(venv)], 300).returncode == 0
    done = _run([*pip, "install", "--no-deps", "-e", str(PROJECT_ROOT)], 600)
    assert done.returncode == 0, done.stderr[-3000:]
    links = ["--find-links", str(WHEELS)] if WHEELS.is_dir() else []
    done = _run([*pip, "install", *links, *edge_requirements()], 3600)
    assert done.returncode == 0, done.stderr[-3000:]
    for heavy in ("torch", "transformers", "peft", "mlflow", "lightgbm"):  # trees run as ONNX
        probe = _run([str(py), "-c", f"import {heavy}"], 60)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, heavy

    out = tmp_path / "pred.jsonl"
    done = _run([str(py), "-m", "chaptering.edge", str(folder), str(src), "--out", str(out), "--verify",
                 "--threads", "1"], 600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    torch_path = load_bundle(bundle, "torch", str(tiny_dir), tmp_path / "cache")
    want = [torch_path.predict(t).boundaries for t in picked]

    def check(rows: list[dict]) -> None:
        assert [r["id"] for r in rows] == [t.id for t in picked]
        for r, starts in zip(rows, want):
            assert [c["start_segment"] for c in r["chapters"]] == starts
            assert all(c["title"] for c in r["chapters"])

    check([json.loads(line) for line in out.read_text().splitlines()])
    # the int8 ONNX title LM needs onnxruntime only: llama_cpp made unimportable
    code = ("import sys, runpy; sys.modules['llama_cpp'] = None; sys.argv = ['x', *sys.argv[1:]];"
            "runpy.run_module('chaptering.edge', run_name='__main__')")
    done = _run([str(py), "-c", code, str(folder), str(src), "--out", str(out), "--quant", "int8", "--threads", "1"],
                600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    check(rows)
    assert "(edge:int8)" in rows[0]["model"]
