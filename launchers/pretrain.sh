#!/usr/bin/env bash
# Single-node (or hostfile multi-node) pretraining through the `deepspeed` launcher.
#
#   bash launchers/pretrain.sh                       # tiny preset, default corpus, CPU or GPU
#   bash launchers/pretrain.sh --num-gpus 2 --preset tiny --train-iters 50 --save runs/a
#   bash launchers/pretrain.sh --hostfile hostfile --num-gpus 8 --ds-config ds_configs/multi-node.json ...
#   deepspeed --no_python launchers/pretrain.sh ...  # under an outer launcher: runs the trainer directly
#
# Launcher flags: --num-gpus N (CPU processes on a CPU machine), --hostfile F, --master-port P,
# --master-addr A, --num-nodes N, --node-rank R (start every node yourself, no pdsh). Every other flag goes to `python -m megamythos.training.pretrain`
# (see --help there). With no flags it trains the tiny preset and prints where checkpoints and logs are.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$REPO/.torch_extensions}"

if [[ -n "${LOCAL_RANK:-}" ]]; then  # already one rank of a launched job
  exec python -u -m megamythos.training.pretrain "$@"
fi

GPU=$(python -c "import torch; print(int(torch.cuda.is_available()))")
NUM_GPUS="" HOSTFILE="" MASTER_PORT="${MASTER_PORT:-29500}" MASTER_ADDR="" NUM_NODES="" NODE_RANK="" TRAIN=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --num-gpus) NUM_GPUS="$2"; shift 2 ;;
    --hostfile) HOSTFILE="$2"; shift 2 ;;
    --master-port) MASTER_PORT="$2"; shift 2 ;;
    --master-addr) MASTER_ADDR="$2"; shift 2 ;;
    --num-nodes) NUM_NODES="$2"; shift 2 ;;
    --node-rank) NODE_RANK="$2"; shift 2 ;;  # start each node yourself (srun, tests): no pdsh/ssh
    *) TRAIN+=("$1"); shift ;;
  esac
done

RUN="${RUN_DIR:-$REPO/runs/tiny}"
DEFAULTS=()
has() { local f; for f in "${TRAIN[@]+"${TRAIN[@]}"}"; do [[ "$f" == "$1" ]] && return 0; done; return 1; }
value() { local i; for ((i = 0; i + 1 < ${#TRAIN[@]}; i++)); do [[ "${TRAIN[i]}" == "$1" ]] && echo "${TRAIN[i+1]}"; done; return 0; }
SAVE="$(value --save)"
has --save || { SAVE="$RUN/checkpoints"; DEFAULTS+=(--save "$SAVE"); }
has --load || DEFAULTS+=(--load "$SAVE")  # resume where this run saves
# logs live next to the checkpoints: RUN/{checkpoints,tensorboard,metrics.jsonl}
has --tensorboard-dir || DEFAULTS+=(--tensorboard-dir "$(dirname "$SAVE")/tensorboard")
has --metrics-file || DEFAULTS+=(--metrics-file "$(dirname "$SAVE")/metrics.jsonl")
if [[ "$GPU" == 0 ]]; then
  export DS_ACCELERATOR=cpu
  NUM_GPUS="${NUM_GPUS:-1}"
  # one BLAS thread pool per rank: oversubscribed cores make ZeRO-3 steps 10x slower
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / NUM_GPUS > 0 ? $(nproc) / NUM_GPUS : 1 ))}"
  has --ds-config || DEFAULTS+=(--ds-config "$REPO/ds_configs/cpu-debug.json")
  # the default run: a few minutes on two cores
  has --train-iters || has --train-tokens || DEFAULTS+=(--train-iters 200)
  has --seq-length || DEFAULTS+=(--seq-length 128)
  has --save-interval || DEFAULTS+=(--save-interval 50)
  has --eval-interval || DEFAULTS+=(--eval-interval 50)
else
  has --ds-config || DEFAULTS+=(--ds-config "$REPO/ds_configs/single-gpu.json")
fi

LAUNCH=(deepspeed --master_port "$MASTER_PORT")
[[ -n "$MASTER_ADDR" ]] && LAUNCH+=(--master_addr "$MASTER_ADDR")
[[ -n "$NUM_NODES" ]] && LAUNCH+=(--num_nodes "$NUM_NODES")
[[ -n "$NUM_GPUS" ]] && LAUNCH+=(--num_gpus "$NUM_GPUS")
[[ -n "$HOSTFILE" ]] && LAUNCH+=(--hostfile "$HOSTFILE")
[[ -n "$NODE_RANK" ]] && LAUNCH+=(--no_ssh --node_rank "$NODE_RANK")
set -x
exec "${LAUNCH[@]}" --module megamythos.training.pretrain "${DEFAULTS[@]+"${DEFAULTS[@]}"}" "${TRAIN[@]+"${TRAIN[@]}"}"
