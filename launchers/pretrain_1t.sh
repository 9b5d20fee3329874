#!/usr/bin/env bash
# The 1t preset on a GPU cluster: 128 nodes x 8 H200 (141 GB; NVLink 450 GB/s, 400 Gb/s InfiniBand per GPU),
# ds_configs/1t.json. No layout fits an 80 GB part: the recurrent core's gradient is whole on each rank while the
# loops' backward runs (32.6 GiB in bf16 with EP 256), whatever ZeRO shards. Layout chosen with the step model
# (megamythos/planning/step_model.py; the dry run prints it):
#   - no tensor parallelism: AutoTP shards attention and the dense blocks only, so each TP rank would run the MoE
#     and the LM head (97% of the step's FLOPs) for its group's tokens again: TP 2 / 4 / 8 predict 392 / 775 /
#     1541 s per step;
#   - EP 256 (AutoEP, 2 of the 512 experts per rank): the token all-to-alls (~10.7 s exposed, the largest
#     communication cost) cost about the same for ep 64-512; ep 64 and 128 are up to 0.6 s faster but need
#     155 / 130 GiB, more than 90% of a 141 GB part;
#   - ZeRO-3 for embeddings, prelude and coda; the recurrent core replicated (ZeRO-2 for it, --replicate-core):
#     gathered once per step instead of ~3T times per micro-batch (T = 64 and changing every step);
#   - micro batch 1 x dp 1024 = 1024 sequences of 4096 (no accumulation), two-level loop checkpointing
#     (--loop-checkpoint-segment 0) and checkpointed prelude/coda blocks: memory plan 117 GiB per GPU once ZeRO has
#     partitioned the model;
#   - no ZeRO++: DeepSpeed's AutoEP refuses hpZ and quantised gradients under ZeRO-3 (deepspeed 0.19).
# Predicted at 40% matmul MFU: ~201 s per step, ~20.9k tokens/s, 22.4% model MFU (T = 64).
#
# It cannot start yet: the trainer builds the whole model in fp32 on every rank before DeepSpeed shards it
# (3.3 TiB per rank, 27 TiB per node of 8), and moves each rank's share to the GPU whole before ZeRO-3 partitions
# it (94.6 GiB with EP 256, which a 141 GB part holds). The plan refuses the host memory until the model is built
# sharded (deepspeed.zero.Init, expert-parallel construction); the dry run prints the plan, then the refusal
# (exit 2).
#
#   bash launchers/pretrain_1t.sh --dry-run                 # no GPU: layout check, memory and step plan, command
#   HOSTFILE=hostfile bash launchers/pretrain_1t.sh --data-path 1.0 /data/a_text_document ...
#
# The run folder is $RUN_DIR (runs/1t): checkpoints/ (--save and --load: a relaunch resumes), tensorboard/ and
# metrics.jsonl, unless --save is given (a --load, --tensorboard-dir or --metrics-file given is kept).
#
# Sizes can be changed with NODES, GPUS_PER_NODE, TP, EP, MICRO, GLOBAL, SEQ, and the machines' with GPU_MEMORY_GB
# (GPU sizes the plan must fit, default 141) and HOST_MEMORY_GB (per node, default 2048); further flags go to
# the trainer.
# It runs `deepspeed --hostfile ... --module megamythos.training.launch <layout flags> ...` (the dry run prints it):
# each rank starts as under launchers/pretrain.sh (its PYTHONPATH, TORCH_EXTENSIONS_DIR and OpenMP threads), and every
# node gets $RUN_DIR/deepspeed-env as DeepSpeed's DS_ENV_FILE, written as for launchers/slurm.sbatch
# (megamythos/training/node_env.py: your ~/.deepspeed_env, this shell's NCCL_*, TORCH_NCCL_*,
# CUDA_DEVICE_MAX_CONNECTIONS, OMP_NUM_THREADS and RUN_DIR, and NCCL defaults).
# The design's form of the same run, which adds launchers/pretrain.sh's defaults (--load, and logs inside --save):
#   deepspeed --hostfile hostfile --num_nodes 128 --num_gpus 8 launchers/pretrain.sh --preset 1t \
#     --ds-config ds_configs/1t.json --tp 1 --ep 256 --zero 3 --bf16 ... --save ckpt/1t
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# each a count >= 1 (0 was refused as the planner's --gpus or --tp, flags the user never gave), without a leading
# zero (bash arithmetic reads 08 as octal) and not a word (read as a variable name)
for var in NODES GPUS_PER_NODE TP EP MICRO GLOBAL SEQ; do
  if [[ -n "${!var:-}" && ! "${!var}" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: $var=${!var}: give a whole number >= 1" >&2
    exit 2
  fi
done
LAYOUT=(--preset 1t --gpus "$(( ${NODES:-128} * ${GPUS_PER_NODE:-8} ))" --gpus-per-node "${GPUS_PER_NODE:-8}"
        --tp "${TP:-1}" --ep "${EP:-256}" --zero 3 --micro-batch-size "${MICRO:-1}"
        --global-batch-size "${GLOBAL:-1024}" --seq-length "${SEQ:-4096}" --loop-checkpoint-segment 0
        --ds-config "$REPO/ds_configs/1t.json" --gpu-memory-gb ${GPU_MEMORY_GB:-141}
        --host-memory-gb "${HOST_MEMORY_GB:-2048}" --plan --hostfile "${HOSTFILE:-hostfile}")
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
  echo "Trainer flags: python -m megamythos.training.pretrain --help; layout flags: python -m megamythos.planning.plan --help"
  exit 0
fi
DRY_RUN=0
TRAINER=()  # the flags for the trainer: every argument but --dry-run, wherever it stands
for arg in "$@"; do
  if [[ "$arg" == "--dry-run" ]]; then DRY_RUN=1; else TRAINER+=("$arg"); fi
done
# Checkpoints, TensorBoard and metrics in the run folder ($RUN_DIR, default runs/1t), resumed from it on relaunch,
# unless the trainer flags say where: without --save, each of these flags the trainer flags leave out.
RUN_DIR="${RUN_DIR:-$REPO/runs/1t}"
given() { local arg; for arg in "${TRAINER[@]}"; do [[ "$arg" == "$1" || "$arg" == "$1="* ]] && return 0; done; return 1; }
if ! given --save; then
  TRAINER+=(--save "$RUN_DIR/checkpoints")
  given --load || TRAINER+=(--load "$RUN_DIR/checkpoints")
  given --tensorboard-dir || TRAINER+=(--tensorboard-dir "$RUN_DIR/tensorboard")
  given --metrics-file || TRAINER+=(--metrics-file "$RUN_DIR/metrics.jsonl")
fi
if (( DRY_RUN )); then
  exec python -m megamythos.planning.plan "${LAYOUT[@]}" --json -- "${TRAINER[@]}"
fi
# Validate first (cheap, no GPU; a refusal is its one line and exit code), then run the exact command the dry run
# prints.
PLAN=$(python -m megamythos.planning.plan "${LAYOUT[@]}" --json -- "${TRAINER[@]}")
if [[ ! -f "${HOSTFILE:-hostfile}" ]]; then
  echo "error: hostfile ${HOSTFILE:-hostfile} not found: set HOSTFILE to DeepSpeed's hostfile (a line 'HOST slots=8' per node), or add --dry-run to plan only" >&2
  exit 2
fi
NODE_ENV="$RUN_DIR/deepspeed-env"
python -m megamythos.training.node_env "$NODE_ENV"
export DS_ENV_FILE="$NODE_ENV"
CMD=$(python -c "import json,sys; print(json.load(sys.stdin)['command'])" <<< "$PLAN")
echo "$CMD"
eval exec "$CMD"
