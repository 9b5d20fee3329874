#!/usr/bin/env bash
# One lent GPU call (issue 25), <= 9 minutes, every stage under its own timeout, everything kept in $DEST:
#
#   DEST=$OUT bash .device/run.sh bash bench/gpu_session.sh     # on the device machine (../shared/gpu kit)
#
# 0. in the background, on half the cores: DeepSpeed's FusedAdam JIT build and the small preset's default corpus,
#    which stage 2's training needs (the benches of stage 1 run pinned to the other half);
# 1. ours against the OpenMythos 0.5.0 reference (wheel carried in .device/whl) at equal settings, eager, fp32
#    and bf16 autocast each (ours also with bf16 weights), tiny and small, batch 8 x 1024, 4 loops;
# 2. bench/gpu_check.sh: bench/gpu_check.py numerics (the fused paths against fp32 references), then the small
#    preset trained under DeepSpeed, bf16, --compile (MFU, profile, memory);
#    if it fails, the same run eager for 30 steps, to tell a compile failure from an engine failure;
# 3. the small preset compiled (ours_bf16_compiled) against the reference's best mode, if time is left.
# Files in $DEST (8 at most come back): session.log (this script's output), prebuild.log, model_tiny.json,
# model_small.json, gpu_check.json, gpu_check_profile.txt, model_small_compiled.json.
set -u
cd "$(dirname "$0")/.."
DEST="${DEST:-bench/results/gpu}"
mkdir -p "$DEST"
exec > >(tee -a "$DEST/session.log") 2>&1
T0=$(date +%s)
stage() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
half=$(( $(nproc) / 2 ))
builds="0-$(( half - 1 ))" benches="$half-$(( $(nproc) - 1 ))"
on_cores() { if command -v taskset > /dev/null; then taskset -c "$@"; else shift; "$@"; fi; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the JIT cache the trainer's ranks use (launch.rank_environment), so stage 0's FusedAdam build is the one they load
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"

stage "environment"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader
python -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'deepspeed', deepspeed.__version__, torch.cuda.get_device_name())"
python -c "import flash_attn" 2>/dev/null && echo "flash-attn: yes" || echo "flash-attn: no (SDPA)"

stage "0. background builds on cores $builds"
small_vocab=$(python -c "from megamythos.model.config import get_preset; print(get_preset('small').vocab_size)")
( export MAX_JOBS=$half; on_cores "$builds" timeout 300 python -c \
    "from deepspeed.ops.op_builder import FusedAdamBuilder; FusedAdamBuilder().load(); print('FusedAdam built')" \
    >> "$DEST/prebuild.log" 2>&1; echo "FusedAdam build rc=$? at $(( $(date +%s) - T0 ))s" >> "$DEST/prebuild.log" ) &
fused_adam=$!
( on_cores "$builds" timeout 300 python -c \
    "from megamythos.data.default_corpus import ensure_default_dataset as e; print(e('data/default', $small_vocab))" \
    >> "$DEST/prebuild.log" 2>&1; echo "corpus build rc=$? at $(( $(date +%s) - T0 ))s" >> "$DEST/prebuild.log" ) &
corpus=$!

for preset in tiny small; do
  stage "1. ours vs reference, $preset, eager"
  on_cores "$benches" timeout 150 python bench/bench_model.py speed --device cuda --preset "$preset" \
      --batch 8 --seq 1024 --loops 4 --rounds 5 --warmup 2 --moe-expert-dims '' \
      --modes ours_matched,ours_bf16,ours_bf16_autocast,reference,reference_bf16_autocast \
      --out "$DEST/model_$preset.json" | tail -40
  echo "bench $preset rc=${PIPESTATUS[0]}"
done

stage "2. gpu_check.sh (waits for the background builds)"
wait "$fused_adam" "$corpus"  # not a bare wait: that would also wait for the tee above
tail -5 "$DEST/prebuild.log"
if ! OUT="$DEST/gpu_check.json" timeout 420 bash bench/gpu_check.sh; then
  stage "2b. gpu_check.sh failed: the same run eager, 30 steps"
  timeout 180 bash launchers/pretrain.sh --num-gpus 1 --preset small --train-iters 30 --bf16 \
      --ds-config ds_configs/single-gpu.json --seq-length 1024 --micro-batch-size 8 --global-batch-size 8 \
      --eval-interval 0 --save-interval 0 --log-interval 5 --save "$(mktemp -d)/checkpoints"
  echo "eager fallback rc=$?"
fi

stage "3. ours compiled vs the reference's best mode, small"
on_cores "$benches" timeout 200 python bench/bench_model.py speed --device cuda --preset small \
    --batch 8 --seq 1024 --loops 4 --rounds 5 --warmup 2 --moe-expert-dims '' \
    --modes ours_bf16_compiled,reference_bf16_autocast --out "$DEST/model_small_compiled.json" | tail -25
echo "bench compiled rc=${PIPESTATUS[0]}"
stage "done"
