#!/usr/bin/env bash
# Packs what bench/gpu_eval.sh needs to score the LLM rows of bench/quality.py on a lent GPU machine that
# reaches no registry (device tool; its image has torch, transformers, tokenizers, numpy, scipy, sklearn,
# pandas): our pure-Python needs copied from this venv, pydantic-core built for its Python 3.12, the
# embedded tokenizer as converted here, and the embedded GGUF. One call carries at most 64 MiB with the
# tree (~21 MiB), and the GGUF alone is 94 MiB, so .gpu-eval/ holds three parts of at most 42 MiB, each
# carried by its own call in order (a, b, c; each copies its part to /tmp/ge, which lasts while the
# machine stays warm). `.gpu-eval/` is git-ignored. Run here, in the repo root.
set -euo pipefail
PY=${PY:-.venv/bin/python}
out=.gpu-eval
rm -rf "$out" && mkdir -p "$out"/a "$out"/b "$out"/c
work=$(mktemp -d)
site=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$work/site"
for name in pydantic pydantic_settings annotated_types typing_inspection dotenv webvtt nltk rouge_score segeval gguf \
            srt.py typing_extensions.py pydantic-*.dist-info pydantic_settings-*.dist-info annotated_types-*.dist-info \
            typing_inspection-*.dist-info python_dotenv-*.dist-info webvtt_py-*.dist-info nltk-*.dist-info \
            rouge_score-*.dist-info segeval-*.dist-info gguf-*.dist-info srt-*.dist-info typing_extensions-*.dist-info; do
  cp -r "$site"/$name "$work/site/"
done
core=$($PY -c "import importlib.metadata as m; print(m.version('pydantic-core'))")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$work/whl" "pydantic-core==$core"
(cd "$work/site" && python3 -m zipfile -e "$work"/whl/pydantic_core-*.whl .)
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
tar -C "$work" -cJf "$out/a/site.tar.xz" site
tok=$($PY -c "from chaptering.config import get_settings; from chaptering.models import convert_embedded
print(convert_embedded(get_settings().cache_dir))")
mkdir -p "$work/tok" && cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json "$tok"/chat_template.jinja "$work/tok/"
tar -C "$work" -cJf "$out/a/tok.tar.xz" tok
gguf=$($PY -c "from chaptering.models import embedded_gguf; print(embedded_gguf())")
(cd "$work" && sha256sum "$gguf" | cut -d' ' -f1 > gguf.sha256 && split -b 34M -d "$gguf" gguf.)
mv "$work"/gguf.00 "$out/a/"; mv "$work"/gguf.01 "$out/b/"; mv "$work"/gguf.02 "$work/gguf.sha256" "$out/c/"
basename "$gguf" > "$out/c/gguf.name"
rm -rf "$work"
du -sh "$out"/*
