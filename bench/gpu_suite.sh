#!/usr/bin/env bash
# One prepared GPU run: our paper-config benches beside the reference anchors, on the same card, in one call.
#
# Prepare (on the development machine; .anchors/ is git-ignored):
#     mkdir -p .anchors && cp ../shared/anchors/*.py .anchors/
# Then one device call, carrying .anchors:
#     bash bench/gpu_suite.sh            # writes $OUT/<step>.jsonl (+ .err), ~8 min on an H100/H200
#     DRY_RUN=1 bash bench/gpu_suite.sh  # the same steps on the CPU at toy sizes (seconds), to check the script
#
# Every step has its own time limit, so one that hangs or crashes does not cost the others; the JSON lines of
# each step are kept in their own file and the reference numbers can be compared as ratios within this run.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
PY=${PY:-python3}
mkdir -p "$OUT"

step() {  # step NAME SECONDS ARGS...: run one bench, JSON lines to $OUT/NAME.jsonl, stderr to $OUT/NAME.err
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$PY" "$@" >"$OUT/$name.jsonl" 2>"$OUT/$name.err"
    local rc=$?
    echo "{\"suite_step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" | tee -a "$OUT/suite.jsonl"
    grep -h '^{' "$OUT/$name.jsonl" | head -40
}

if [ -n "${DRY_RUN:-}" ]; then
    step tts 120 bench/tts.py --device cpu --config paper --batches 1
    step vc 120 bench/vc.py --device cpu --config paper --batches 1
    step anchor_speech 120 .anchors/speech_batch_anchor.py --tiny --device cpu
    step anchor_longlive 120 .anchors/longlive_anchor.py --tiny --device cpu
    exit 0
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PY" -c 'import torch; print(torch.__version__)'; } \
    >"$OUT/device.txt" 2>&1
step tts 100 bench/tts.py --device cuda --config paper
step vc 100 bench/vc.py --device cuda --config paper
step video 150 bench/video.py --device cuda --config paper --streams 1 4 --blocks 10
step anchor_speech 100 .anchors/speech_batch_anchor.py --device cuda
step anchor_longlive 60 .anchors/longlive_anchor.py --device cuda
step anchor_longlive_cudnn 60 .anchors/longlive_anchor.py --device cuda --attn-backend cudnn
