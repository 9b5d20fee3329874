#!/usr/bin/env bash
# Pretraining, single node or multi-node through a hostfile. The design's form: the deepspeed launcher's flags
# start the processes and each rank runs this file with Python.
#
#   deepspeed launchers/pretrain.sh                           # tiny preset, default corpus, CPU or GPU
#   deepspeed --num_gpus 2 launchers/pretrain.sh --preset tiny --train-iters 50 --save runs/a
#   deepspeed --hostfile hostfile --num_gpus 8 launchers/pretrain.sh --ds-config ds_configs/multi-node.json ...
#
# The same runs without naming deepspeed; its flags may be spelt with `-` or `_`: --num-gpus (CPU processes on a
# CPU machine), --num-nodes, --hostfile, --include, --exclude, --master-addr, --master-port, --node-rank R
# (start each node yourself, no ssh):
#
#   bash launchers/pretrain.sh --num-gpus 2 --preset tiny --train-iters 50 --save runs/a
#   deepspeed --no_python launchers/pretrain.sh ...           # srun or torchrun setting RANK, LOCAL_RANK: the same
#
# Every other flag goes to `python -m megamythos.training.pretrain` (see --help there) after the defaults of
# megamythos/training/launch.py: checkpoints in $RUN_DIR/checkpoints (runs/tiny), logs next to them, on CPU the
# 400-step debug run. A launcher flag that reaches the trainer ends the job with one line saying where it goes.
# SIGTERM/SIGINT/SIGHUP/SIGUSR1 to `bash launchers/pretrain.sh` (or its process group, or one rank), or the end of any
# launcher process above a rank (`deepspeed` runner killed alone): every rank saves one checkpoint and exits 0 (see
# megamythos/training/launch.py).
"exec" "python" "-u" "$0" "$@"  # bash runs this file with Python too (to Python the line is a string)
''':' <<'#'''  # Python starts here; to bash (never reached, or `bash -n`) the rest is a here-document
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's megamythos
from megamythos.training.launch import main  # noqa: E402
from megamythos.training.process_exit import end_process  # noqa: E402

end_process(main())
#
