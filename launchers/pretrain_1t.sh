#!/usr/bin/env bash
# The 1t preset on a GPU cluster: 128 nodes x 8 GPUs, ZeRO-3, TP 8 (AutoTP, within a node), EP 128 (AutoEP,
# 4 of the 512 experts per rank), ds_configs/1t.json. The memory plan (megamythos.params) is ~59 GiB per GPU,
# which fits 80 GB and 141 GB parts.
#
#   bash launchers/pretrain_1t.sh --dry-run                 # no GPU: meta-device build, layout check, plan, command
#   HOSTFILE=hostfile bash launchers/pretrain_1t.sh --data-path 1.0 /data/a_text_document ...
#
# Sizes can be changed with NODES, GPUS_PER_NODE, TP, EP, MICRO, GLOBAL, SEQ; further flags go to the trainer.
# It runs `deepspeed --hostfile ... --module megamythos.training.pretrain <layout flags> ...` (the dry run prints it).
# The design's form of the same run, which adds launchers/pretrain.sh's defaults (--load and logs next to --save):
#   deepspeed --hostfile hostfile --num_nodes 128 --num_gpus 8 launchers/pretrain.sh --preset 1t \
#     --ds-config ds_configs/1t.json --tp 8 --ep 128 --zero 3 --bf16 ... --save ckpt/1t
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
LAYOUT=(--preset 1t --nodes "${NODES:-128}" --gpus-per-node "${GPUS_PER_NODE:-8}" --tp "${TP:-8}" --ep "${EP:-512}"
        --zero 3 --micro-batch-size "${MICRO:-1}" --global-batch-size "${GLOBAL:-1024}" --seq-length "${SEQ:-4096}"
        --ds-config "$REPO/ds_configs/1t.json" --hostfile "${HOSTFILE:-hostfile}")
if [[ "${1:-}" == "--dry-run" ]]; then
  shift
  exec python -m megamythos.training.layout "${LAYOUT[@]}" --dry-run -- "$@"
fi
# Validate first (cheap, no GPU), then run the exact command the dry run prints.
CMD=$(python -m megamythos.training.layout "${LAYOUT[@]}" -- "$@" | python -c "import json,sys; print(json.load(sys.stdin)['command'])")
echo "$CMD"
eval exec "$CMD"
