#!/usr/bin/env bash
# One prepared GPU run: GPU correctness, then our paper-config benches beside the reference anchors, on the
# same card, in one call.
#
# Prepare (on the development machine; .anchors/ is git-ignored):
#     mkdir -p .anchors && cp ../shared/anchors/*.py .anchors/
# Then one device call, carrying .anchors:
#     bash bench/gpu_suite.sh            # ~6-7 min on an H100/H200
#     DRY_RUN=1 bash bench/gpu_suite.sh  # the same steps on the CPU at toy sizes (seconds), to check the script
#     ONLY="vc parity" bash bench/gpu_suite.sh   # some steps only (a rerun after a fix)
#
# Every step has its own time limit, so one that hangs or crashes does not cost the others. Everything lands in
# three files (a device call brings back only a few): $OUT/results.jsonl (every step's JSON lines, each tagged
# with its step, plus one {"suite_step", "rc", "seconds"} line per step), $OUT/parity.txt (pytest's report of
# the GPU tests) and $OUT/stderr.log. Compare our numbers with the anchors' as ratios within one run.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}

wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

step() {  # step NAME SECONDS ARGS...: run one bench; its JSON lines, tagged, go to results.jsonl and stdout
    local name=$1 limit=$2
    shift 2
    wanted "$name" || return 0
    local t0=$SECONDS
    echo "== $name: $*" >>"$OUT/stderr.log"
    timeout "$limit" "$PY" "$@" 2>>"$OUT/stderr.log" \
        | "$PY" -c 'import json, sys
for line in sys.stdin:
    try:
        print(json.dumps({"step": sys.argv[1], **json.loads(line)}), flush=True)
    except (ValueError, TypeError):
        pass' "$name" | tee -a "$OUT/results.jsonl"
    local rc=${PIPESTATUS[0]}
    echo "{\"suite_step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" | tee -a "$OUT/results.jsonl"
}

parity() {  # the GPU tests (plain torch: no conftest, which needs the serving stack)
    wanted parity || return 0
    local t0=$SECONDS
    timeout "$1" "$PY" -m pytest --noconftest -p no:cacheprovider -m gpu -s -q -W ignore::pytest.PytestConfigWarning \
        tests/test_gpu_parity.py tests/test_graphs.py tests/test_video_model.py tests/test_avatar_model.py tests/test_video_wan_gpu.py \
        tests/test_meanvc.py \
        >"$OUT/parity.txt" 2>&1
    local rc=$?
    grep -E "error|passed|failed|skipped" "$OUT/parity.txt" | tail -15
    echo "{\"suite_step\": \"parity\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" | tee -a "$OUT/results.jsonl"
}

if [ -n "${DRY_RUN:-}" ]; then
    parity 120
    step tts 120 bench/tts.py --device cpu --config paper --batches 1
    step tts_pocket 120 bench/tts.py --weights random --tiny --device cpu --gpu-bench --batches 1,2
    step vc 120 bench/vc.py --device cpu --config paper --batches 1
    step vc_processes 120 bench/vc.py --device cpu --config paper --processes 2 --batches 2 --seconds 2
    step vc_shipped 120 bench/vc.py --device cpu --config default --batch-bench --batches 1 2
    step vc_meanvc 120 bench/vc.py --device cpu --weights "${MEANVC_DIR:-/tmp/meanvc_random}" --random-release --tiny \
        --batch-bench --batches 1 2
    step anchor_speech 120 .anchors/speech_batch_anchor.py --tiny --device cpu
    step anchor_longlive 120 .anchors/longlive_anchor.py --tiny --device cpu
    step video_wan 120 bench/video_wan.py --tiny --device cpu --blocks 2
    step wan_vs_anchor 30 bench/video_wan.py --compare "$OUT/results.jsonl"
    exit 0
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PY" -c 'import torch; print(torch.__version__)'; } \
    | tee "$OUT/device.txt"
step vc 100 bench/vc.py --device cuda --config paper --batches 1 8 64 256 1024 2048
parity 120
step vc_processes 150 bench/vc.py --device cuda --config paper --processes 1 8 12 --batches 256 --seconds 3
# the shipped checkpoint (harmonic vocoder: pitch tracker and 80 oscillators per session), not yet run on a GPU;
# then an upload's wait with and without its reference fit (vc.reference)
step vc_shipped 120 bench/vc.py --device cuda --config default --batches 1 64 256 1024
# MeanVC's published shapes with random weights (written to /tmp, not $OUT: WavLM-Large is 1.3 GB; the ASR is
# a conformer-sized stand-in run per session as the shipped TorchScript is): sessions per GPU at 160 ms chunks
step vc_meanvc 150 bench/vc.py --device cuda --weights "${MEANVC_DIR:-/tmp/meanvc_random}" --random-release \
    --chunk-ms 160 --batches 1 64 256 1024 2048 --asr-threads 8
step tts 90 bench/tts.py --device cuda --config paper
# Pocket TTS at the release's shapes (random weights), served steps with CUDA graphs: streams per GPU, first audio
step tts_pocket 120 bench/tts.py --weights random --device cuda --batches 1,64,256,1024
step anchor_speech 90 .anchors/speech_batch_anchor.py --device cuda
step video 120 bench/video.py --device cuda --config paper --streams 1 4 --blocks 8
step anchor_longlive 60 .anchors/longlive_anchor.py --device cuda
# LongLive's network (Wan2.1-1.3B, 832x480, random weights) on the served path: DiT + streaming Wan VAE to uint8,
# graphs, bf16; the anchor again with LongLive's attention budget (sink 3 + window 6 + block 3 frames), then
# the ratio of the two (never run on a GPU yet)
step video_wan 240 bench/video_wan.py --device cuda --streams 1 2 --blocks 12
step anchor_longlive_w6 60 .anchors/longlive_anchor.py --device cuda --window 6
step wan_vs_anchor 30 bench/video_wan.py --compare "$OUT/results.jsonl"
