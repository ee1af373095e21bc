#!/usr/bin/env bash
# One-shot accelerator benchmark: BioCLIP-2's ViT-L/14 and Qwen2.5-VL-7B at their real sizes with
# random weights (nothing is downloaded), hierzoo against the paper's per-question loops, on
# synthetic 500x375 JPEGs. Writes OUT/gpu.json (one record) and prints a table.
#
#   benchmarks/gpu.sh [OUT_DIR]          # default benchmarks/results
#   QUICK=1 benchmarks/gpu.sh [OUT_DIR]  # the device-decoded CLIP run and the VLM run, fewer images
#
# On a machine without CUDA it runs the same steps at toy sizes on the CPU (a dry run, with no
# time limits: it checks that every step works, not how fast).
# Targets on one H200: ViT-L/14 >= 2,000 images/s end to end, Qwen2.5-VL-7B >= 150 questions/s,
# each >= 8x the paper's loop. Budget: at most 9 minutes (each step has its own time limit).
# Each step's output (stdout and stderr) goes to OUT/gpu-STEP.log; a step that fails says so
# there and on the terminal, and the script goes on with the next.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
rm -f "$OUT/gpu_vision_attention.json"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1  # a step killed at its time limit keeps what it printed

if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  SIZE=real
  CLIP=(--n-images 8192 --batch-size 256,512 --baseline-images 24)
  VLM=(--n-images 256 --batch-size 16,32,64 --baseline-images 3)  # batched vision attention: bigger batches may pay now
  VA=(--device cuda --dtype bfloat16 --heads 16 --mlp 3420)
  CPUS=$(nproc)
  $PY -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
else
  SIZE=tiny
  CLIP=(--n-images 32 --batch-size 8,16 --baseline-images 2)
  VLM=(--n-images 8 --batch-size 4 --baseline-images 2)
  VA=(--images 2 --repeats 1)
  CPUS=2
  echo "no CUDA device: a dry run at toy sizes on the CPU, without time limits"
fi

step() {  # name, time limit in seconds (the real run only), command...
  local name=$1 limit=$2 log rc why
  log="$OUT/gpu-$name.log"
  shift 2
  echo "== $name"
  [ "$SIZE" = real ] && set -- timeout "$limit" "$@"
  "$@" 2>&1 | grep --line-buffered -v -e "^Loading weights" -e "^Writing model" | tee "$log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    why="exit status $rc"
    [ "$rc" -eq 124 ] && why="stopped at its time limit of $limit s"
    echo "FAILED: $name ($why; see $log)" | tee -a "$log"
  fi
}

bench() {  # name, time limit, bench arguments...
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" $PY -m hierzoo bench --model "$@" --size "$SIZE" --record "$OUT/gpu-$name.json"
}

if [ -n "${QUICK:-}" ]; then  # a second, shorter pass: the faster CLIP pipeline and fewer images
  CLIP=(--n-images 8192 --batch-size 256,512 --baseline-images 16)
  VLM=(--n-images 128 --batch-size 32 --baseline-images 2)
  [ "$SIZE" = tiny ] && CLIP=(--n-images 16 --batch-size 8 --baseline-images 2) && VLM=(--n-images 4 --batch-size 4 --baseline-images 1)
else
  bench clip-pil-workers 110 bioclip2 --random-weights "${CLIP[@]}" --num-workers $((CPUS - 1)) --baseline
  bench clip-tensor-workers 110 bioclip2 --random-weights "${CLIP[@]}" --num-workers $((CPUS - 1)) --worker-decode tensor --baseline
fi
bench clip-nvjpeg 110 bioclip2 --random-weights "${CLIP[@]}" --num-workers 8 --decode-on-device --baseline \
  --profile "$OUT/profile-clip-nvjpeg.txt"  # 8 threads read the bytes; one batch profiled
[ -n "${CLIP_ONLY:-}" ] || bench vlm 200 qwen2.5-vl-7b --random-weights "${VLM[@]}" --baseline --profile "$OUT/profile-vlm.txt"
if [ -z "${QUICK:-}${CLIP_ONLY:-}" ]; then  # the 7B vision tower alone: per-window attention loop vs window-batched
  step vision-attention 50 $PY benchmarks/vision_attention.py "${VA[@]}" --json "$OUT/gpu_vision_attention.json"
fi
$PY benchmarks/gpu_summary.py "$OUT"
