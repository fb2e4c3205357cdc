#!/usr/bin/env bash
# Packs what bench/gpu.sh needs on a lent GPU machine that reaches no registry (device tool): the GPU
# stack as Unsloth pins it (it caps transformers at 5.17, TRL at 1.15, datasets below 5), our pure-Python
# needs, and the embedded tokenizer. Run here, in the repo root; carry `.gpu` (about 17 MB, under the
# 64 MiB that travels: only the CUDA 13.0 build of bitsandbytes and no Unsloth Studio front end). `.gpu/` is
# git-ignored.
set -euo pipefail
work=$(mktemp -d)
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
python3 -m pip download -q --no-deps "${plat[@]}" -d "$work/whl" \
  unsloth==2026.10.9 unsloth_zoo==2026.10.9 bitsandbytes==0.50.2 trl==1.15.0 datasets==4.8.5 peft==0.21.2 \
  dill==0.4.1 multiprocess==0.70.19 fsspec==2026.2.0 tyro docstring-parser typeguard shtab cut_cross_entropy \
  msgspec json5 nest-asyncio structlog hf_transfer pydantic pydantic-core annotated-types typing-inspection \
  pydantic-settings python-dotenv webvtt-py typing_extensions
python3 -m pip install -q --no-deps --no-compile "${plat[@]}" --target "$work/site312" "$work"/whl/*.whl
python3 -m pip download -q --no-deps --no-binary=:all: -d "$work/sd" srt==3.5.3  # sdist only: one module
tar -xzf "$work"/sd/srt-3.5.3.tar.gz -C "$work" && cp "$work"/srt-3.5.3/srt.py "$work/site312/"
rm -rf "$work/site312/studio" "$work/site312/bin"
find "$work/site312/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda130*' ! -name '*_cpu*' -delete
mkdir -p .gpu/tok
tar -C "$work" -cJf .gpu/site.tar.xz site312
tok=$(${PY:-.venv/bin/python} -c "from chaptering.config import get_settings; from chaptering.models import convert_embedded
print(convert_embedded(get_settings().cache_dir))")
cp "$tok"/{tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/tok/
rm -rf "$work"
du -sh .gpu
