#!/usr/bin/env bash
# All GPU checks in one command, for a lent CUDA machine (device tool, `carry: [".gpu"]`, after
# bench/gpu_bundle.sh here): the gpu-marked tests, then bench/train.py with both backends on the
# SmolLM2-135M and Qwen2.5-0.5B shapes. The embedded GGUF (98 MB) is over what travels, so the
# embedded model's folder is rebuilt there with its architecture and tokenizer and random weights:
# right for speed and for the code paths, meaningless for quality. Results land in $OUT (or out/gpu).
# On an H100 (2026-11-27): setup ~30 s, tests ~165 s, each bench run ~70 s at 12 steps: ~8 minutes in all.
# TESTS=0 skips the tests; EXTRA="--set train.batch_size=8" passes overrides to every bench run.
set -uo pipefail
OUT=${OUT:-out/gpu}
STEPS=${STEPS:-12}
TESTS=${TESTS:-1}
EXTRA=${EXTRA:-}
mkdir -p "$OUT"
tar -C /tmp -xJf .gpu/site.tar.xz || exit 1
export PYTHONPATH=/tmp/site312:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, transformers, trl, peft, datasets, bitsandbytes
print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__,
      'peft', peft.__version__, 'datasets', datasets.__version__, 'bitsandbytes', bitsandbytes.__version__)"
} 2>&1 | tee "$OUT/env.txt"
python3 -c "from chaptering.config import get_settings; from chaptering.models import EMBEDDED_NAME, make_random_model
make_random_model(get_settings().cache_dir / EMBEDDED_NAME, '.gpu/tok', 'smollm2-135m')" || exit 1
if [ "$TESTS" = 1 ]; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/pytest.log" | tail -25
fi
for shape in smollm2-135m qwen2.5-0.5b; do
  for backend in peft unsloth; do
    echo "== $shape $backend" | tee -a "$OUT/bench.log"
    # shellcheck disable=SC2086 # EXTRA holds several words on purpose
    timeout 110 python3 bench/train.py --steps "$STEPS" --backend "$backend" --shape "$shape" $EXTRA \
      >>"$OUT/bench.log" 2>&1 \
      || echo "FAILED ($?)" | tee -a "$OUT/bench.log"
  done
done
cat out/bench/train-*-cuda-*.json > "$OUT/bench.json" 2>/dev/null
grep -h -E '"(base|backend|tokens_per_s|tokens_per_s_steady|seconds_per_step|peak_gpu_gb|mfu_4n)"' "$OUT/bench.json"
