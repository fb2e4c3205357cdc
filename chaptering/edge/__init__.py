"""The on-device runtime: an exported folder (`chaptering export`) run without PyTorch.

Only numpy, onnxruntime, tokenizers, llama-cpp-python and pydantic are needed (lightgbm only for a folder
exported before the trees were written as ONNX), plus chaptering modules that import none of torch,
transformers or lightgbm (tests/test_export.py and tests/test_edge_venv.py assert it). `load_export` is the
entry point; `python -m chaptering.edge DIR transcripts.jsonl` is the command line.
"""

from __future__ import annotations

from chaptering.edge.runtime import load_export, parse_spec

__all__ = ["load_export", "parse_spec"]
