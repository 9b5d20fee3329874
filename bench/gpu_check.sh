#!/usr/bin/env bash
# One command on one GPU, <= 8 minutes: are the fused paths right, and how fast does the small preset train?
#
#   bash bench/gpu_check.sh            # writes bench/results/gpu_check.json (numerics, tokens/s, MFU)
#
# 1. bench/gpu_check.py numerics: flash-attn (or SDPA) attention, the grouped-mm MoE and (apex) RMSNorm in bf16
#    against fp32 references, forward and backward (~30 s).
# 2. the small preset, 50 steps, bf16, --compile, ZeRO-2 single GPU (ds_configs/single-gpu.json; apex FusedAdam
#    when apex imports, else DeepSpeed's fused Adam: the log names it), seq 1024,
#    micro batch 8, on the default corpus (built on first use, ~1-2 min: BPE on the stdlib sources); compilation
#    is in the first steps, which the summary leaves out. Capped at 6 minutes. Steps 20-21 are profiled: their
#    ops by GPU self time go to bench/results/gpu_check_profile.txt.
# 3. bench/gpu_check.py summarize: median tokens/s, TFLOP/s and MFU against PEAK_TFLOPS (default 989, the bf16
#    dense peak of an H100/H200 SXM; set it for another GPU), and the peak allocated GPU memory.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-bench/results/gpu_check.json}"
RUN_DIR="$(mktemp -d)"
trap 'rm -rf "$RUN_DIR"' EXIT

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh needs a CUDA GPU')"
python bench/gpu_check.py numerics --device cuda --out "$OUT"
timeout 360 bash launchers/pretrain.sh --num-gpus 1 --preset small --train-iters 50 --bf16 --compile \
    --ds-config ds_configs/single-gpu.json --seq-length 1024 --micro-batch-size 8 --global-batch-size 8 \
    --eval-interval 0 --save-interval 0 --log-interval 10 --peak-tflops "${PEAK_TFLOPS:-989}" \
    --save "$RUN_DIR/checkpoints" --metrics-file "$RUN_DIR/metrics.jsonl" --tensorboard-dir "$RUN_DIR/tb" \
    --profile-dir "$RUN_DIR/profile" --profile-step-start 20 --profile-step-end 21
cp "$RUN_DIR"/profile/steps_20-21_rank_0.txt "$(dirname "$OUT")/gpu_check_profile.txt"
python bench/gpu_check.py summarize --metrics "$RUN_DIR/metrics.jsonl" --warmup 5 --out "$OUT"
