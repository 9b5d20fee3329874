"""What ``launchers/pretrain.sh`` does, in each of the three ways it is started.

``launchers/pretrain.sh`` is both a bash script and a Python script whose Python part calls :func:`main`; run by
bash, its first line runs the file with Python. :func:`main` tells the forms apart by ``LOCAL_RANK`` and ``RANK``
(:func:`started_as_rank`):

* ``deepspeed [launcher flags] launchers/pretrain.sh [trainer flags]`` (the design's form): the DeepSpeed launcher
  runs ``python -u launchers/pretrain.sh`` on every rank, with both set: :func:`rank_arguments`, then
  the trainer in the same process;
* ``deepspeed --no_python ... launchers/pretrain.sh ...`` (or ``srun``/``torchrun`` setting both): bash
  on every rank, then the same;
* ``bash launchers/pretrain.sh [--num-gpus N --hostfile F ...] [trainer flags]`` (``python -m
  megamythos.training.launch ...`` where an installed package has no launchers/): not both, so
  :func:`launch` translates the launcher flags and runs ``deepspeed ... --module megamythos.training.pretrain``
  under :func:`supervise`, which turns SIGTERM/SIGINT/SIGHUP/SIGUSR1 into one checkpoint and exit code 0.

Signals (DeepSpeed 0.19.8): the single-node ``deepspeed`` runner has no handler, so a SIGTERM to it alone ends it
at once and leaves its ``launch.py`` and the ranks running (each rank then notices that a launcher above it ended,
see :class:`megamythos.training.signals.LauncherWatch`, and stops as on SIGTERM); ``launch.py`` terminates the
ranks on SIGTERM/SIGINT but kills them after 30 s and exits 1 either way. The supervisor therefore signals the
ranks themselves (every rank then agrees to stop, saves once and exits 0; see :mod:`megamythos.training.signals`)
and keeps the runner and ``launch.py`` out of reach of a signal to its process group (Ctrl-C, ``kill -- -PGID``):
the runner starts in a process group of its own, and each local rank moves back into the supervisor's
(:func:`megamythos.training.signals.join_supervisor_group`), so such a signal reaches the supervisor and the
ranks, never ``launch.py``, whose 30-s kill cannot cut a long save short; ``launch.py`` then sees the ranks exit 0
and exits 0. Multi-node through pdsh: the ranks are not its descendants, so the signal goes to the runner, whose
pdsh handler ``pkill``s the remote ranks with SIGTERM (the same checkpoint path; not tested here, there is no
pdsh).

The bash form runs DeepSpeed with ``--log_level critical``: its runner's and ``launch.py``'s lines (the commands
they run; after a rank's one-line error, ``launch.py``'s line repeating the whole command) stay out of the
output, and :func:`supervise` says in one line what they would have told (the runner's exit code; the signal a
rank died of).

All three give the trainer the same arguments and environment: the defaults of :func:`trainer_defaults` (where
checkpoints and logs go, the CPU debug run) and of :func:`rank_environment` (``DS_ACCELERATOR``,
``OMP_NUM_THREADS``, ``TORCH_EXTENSIONS_DIR``, ``PYTHONPATH``). A launcher flag that reaches a rank, where it
cannot act any more, ends the job with a one-line :class:`LaunchError` naming the form that takes it.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from megamythos.errors import UserError, path_too_long
from megamythos.planning.plan import hostfile_slots
from megamythos.runtime.locations import CHECKOUT, DEFAULT_DS_CONFIG, DS_CONFIGS, WORKSPACE
from megamythos.runtime.remote_words import check_remote_words
from megamythos.training.process_exit import EXIT_RECORDS_ENV, end_process
from megamythos.training.rendezvous import env_master_port, free_port

logger = logging.getLogger(__name__)

SCRIPT = "launchers/pretrain.sh"
TRAINER = "megamythos.training.pretrain"
RECORDS_PREFIX = "megamythos-ranks-"  # the supervisor's exit-record folders in the temporary directory
DEFAULT_MASTER_PORT = 29500
GPU_CHOICES = ("num_gpus", "include", "exclude")  # the deepspeed flags that choose a node's GPUs

# Flags of the `deepspeed` launcher that `bash launchers/pretrain.sh` takes too, spelt with `-` or `_`:
# deepspeed name -> metavar (None: the flag takes no value).
LAUNCHER_FLAGS: dict[str, str | None] = {
    "num_gpus": "N", "num_nodes": "N", "hostfile": "FILE", "include": "HOSTS", "exclude": "HOSTS",
    "master_addr": "ADDR", "master_port": "PORT", "node_rank": "R", "no_ssh": None,
}

# Launcher flags holding a whole number, and the range each takes.
LAUNCHER_COUNTS = {"num_gpus": (1, None), "num_nodes": (1, None), "node_rank": (0, None), "master_port": (1, 65535)}
# one node of --include/--exclude (DeepSpeed's NODE_SPEC): HOST, or HOST:SLOT[,SLOT ...]; nodes are joined by @
NODE_SPEC = re.compile(r"[^\s@:,]+(:\d+(,\d+)*)?")


class LaunchError(UserError, ValueError):
    """A flag given to the wrong form of the launcher (reported in one line, exit code 2)."""


def launcher_flag(arg: str) -> str | None:
    """The deepspeed name of ``arg`` (``--num-gpus``, ``--num_gpus=2`` -> ``num_gpus``) if it is a launcher flag."""
    if not arg.startswith("--"):
        return None
    name = arg[2:].split("=", 1)[0].replace("-", "_")
    return name if name in LAUNCHER_FLAGS else None


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of the last ``flag VALUE`` or ``flag=VALUE`` in ``argv``, or None when it is not given."""
    found = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def given(argv: Sequence[str], *flags: str) -> bool:
    """Whether any of ``flags`` is in ``argv``, as ``flag VALUE`` or ``flag=VALUE``."""
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv for flag in flags)


def trainer_defaults(argv: Sequence[str], gpu: bool, env: Mapping[str, str]) -> list[str]:
    """Trainer flags that ``argv`` leaves out, to put before it, each as ``--flag=value``.

    Everything a run writes stays in its run folder: without ``--save``, ``$RUN_DIR`` (default ``runs/tiny``)
    holds ``checkpoints/``, ``tensorboard/`` and ``metrics.jsonl``; with ``--save DIR``, DIR is the run folder
    and the logs go inside it (``DIR/tensorboard``, ``DIR/metrics.jsonl``), so two runs never share a log. The
    run resumes from where it saves. With a GPU, ``ds_configs/single-gpu.json`` and sequences of the model's
    training length (``max_seq_len`` up to 4096); without one the CPU debug run (``ds_configs/cpu-debug.json``:
    bf16, 400 iterations of 4 x 128 tokens, a checkpoint and a validation every 100).
    Applying it to its own output adds nothing, so every form of the launcher may call it.
    """
    save = flag_value(argv, "--save")
    if save is None:
        logs = Path(env.get("RUN_DIR", WORKSPACE / "runs" / "tiny"))
        if logs.exists() and not logs.is_dir():
            raise LaunchError(f"RUN_DIR={logs} is a file, not a run folder; set RUN_DIR to a directory (a new one "
                              "starts a run, an existing run folder resumes it)")
        save = str(logs / "checkpoints")
    else:
        logs = Path(save)
    wanted = {"--save": save, "--load": save, "--tensorboard-dir": str(logs / "tensorboard"),
              "--metrics-file": str(logs / "metrics.jsonl")}
    if gpu:
        wanted["--ds-config"] = str(DS_CONFIGS / "single-gpu.json")
        if not given(argv, "--seq-length"):  # the model's training length, as the planner assumes (the trainer's
            from megamythos.model.config import get_preset  # own default is a CPU length)
            from megamythos.training.arguments import parse_args

            args = parse_args(argv)
            wanted["--seq-length"] = str(get_preset(args.preset, **args.model_overrides()).training_seq_len)
    else:
        wanted.update({"--ds-config": str(DEFAULT_DS_CONFIG), "--seq-length": "128",
                       "--save-interval": "100", "--eval-interval": "100"})
        if not given(argv, "--train-tokens"):
            wanted["--train-iters"] = "400"
    # flag=value: a value starting with "-" (--save=-1 gives --tensorboard-dir -1/tensorboard) is not read as a flag
    return [f"{flag}={value}" for flag, value in wanted.items() if not given(argv, flag)]


def rank_environment(env: Mapping[str, str], gpu: bool, local_processes: int | None) -> dict[str, str]:
    """Variables to set for the ranks of one node (only those ``env`` lacks or has to change).

    One BLAS/OpenMP thread pool per rank of the node: ``OMP_NUM_THREADS`` = the cores this process may use //
    ``local_processes`` (None: not known here, :func:`ranks_on_this_node`; each rank then sets it for itself).
    Neither DeepSpeed's launcher (0.19.8, unless ``--bind_cores_to_rank``) nor srun sets it, so every rank's pool
    took all the node's cores: oversubscribed cores make ZeRO-3 steps on CPU ten times slower, and slow a GPU
    rank's host work (data, the optimizer's CPU side). On CPU also DeepSpeed's CPU accelerator; where the pool has
    more than one thread, its threads spin between operations (``OMP_WAIT_POLICY=ACTIVE``): ZeRO-3's Python work
    between two operations outlasts OpenMP's default spin, so the pool falls asleep and every parallel operation
    pays a wake-up (the default run at one process trains 1.4x as fast spinning, bench/README.md). Only where this
    function chose the thread count, so the ranks own the cores (under another process's load spinning costs about
    16%); a set ``OMP_NUM_THREADS`` or ``OMP_WAIT_POLICY`` wins.
    OpenMP reads its settings once, when torch loads it: :func:`launch` sets them before the ranks start, and a
    rank started without them (``deepspeed launchers/pretrain.sh``) starts itself again with them
    (:func:`rank_arguments`). From a checkout: the repository on PYTHONPATH and a JIT-extension cache in it (an
    installed package is importable already, and its ops go to torch's own cache).
    """
    paths = env.get("PYTHONPATH", "").split(os.pathsep) if env.get("PYTHONPATH") else []
    updates = {}
    if CHECKOUT is not None and str(CHECKOUT) not in paths:
        updates["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT), *paths])
    if CHECKOUT is not None and "TORCH_EXTENSIONS_DIR" not in env:
        updates["TORCH_EXTENSIONS_DIR"] = str(CHECKOUT / ".torch_extensions")
    if not gpu:
        updates["DS_ACCELERATOR"] = "cpu"
    if "OMP_NUM_THREADS" not in env and local_processes is not None:
        threads = max(1, len(os.sched_getaffinity(0)) // local_processes)
        updates["OMP_NUM_THREADS"] = str(threads)
        if not gpu and threads > 1 and "OMP_WAIT_POLICY" not in env:
            updates["OMP_WAIT_POLICY"] = "ACTIVE"
    return updates


def split_launcher_flags(argv: Sequence[str]) -> tuple[dict[str, str | None], list[str]]:
    """``bash launchers/pretrain.sh`` arguments -> ({deepspeed flag name: value}, trainer arguments)."""
    launcher: dict[str, str | None] = {}
    trainer: list[str] = []
    args = iter(argv)
    for arg in args:
        name = launcher_flag(arg)
        if name is None:
            trainer.append(arg)
            continue
        if name in launcher:
            raise LaunchError(f"--{name} is given twice; give it once")
        if LAUNCHER_FLAGS[name] is None:
            launcher[name] = None
        elif "=" in arg:
            launcher[name] = arg.split("=", 1)[1]
        else:
            value = next(args, None)
            if value is None:
                raise LaunchError(f"{arg} needs a value ({arg} {LAUNCHER_FLAGS[name]})")
            launcher[name] = value
    for name, (low, high) in LAUNCHER_COUNTS.items():
        value = launcher.get(name)
        if value is not None and not (value.isdigit() and low <= int(value) <= (high or int(value))):
            allowed = f"from {low} to {high}" if high else f">= {low}"
            raise LaunchError(f"--{name} {value}: give a whole number {allowed}")
    hostfile = launcher.get("hostfile")
    if hostfile is not None and not Path(hostfile).is_file():
        raise LaunchError(f"--hostfile {hostfile} does not exist; give DeepSpeed's hostfile (a line 'HOST slots=N' "
                          "per node), or drop --hostfile to train on this machine")
    hosts = {"localhost": 0} if hostfile is None else hostfile_slots(hostfile)  # a malformed line: its error
    if not hosts:
        raise LaunchError(f"--hostfile {hostfile} lists no host; give a line 'HOST slots=N' per node")
    if int(launcher.get("num_nodes") or 1) > 1 and hostfile is None:
        raise LaunchError(f"--num_nodes {launcher['num_nodes']} needs --hostfile FILE listing the nodes (a line "
                          "'HOST slots=N' per node)")
    if launcher.get("num_nodes") and launcher.get("node_rank") and int(launcher["node_rank"]) >= int(
            launcher["num_nodes"]):
        raise LaunchError(f"--node_rank {launcher['node_rank']} is not below --num_nodes {launcher['num_nodes']}: "
                          "nodes are ranked 0 to N-1")
    chosen = [f"--{name}" for name in ("num_gpus", "num_nodes", "include", "exclude") if name in launcher]
    if len(chosen) > 1 and {"include", "exclude"} & launcher.keys():  # DeepSpeed's runner: a ValueError traceback
        raise LaunchError(f"{' and '.join(chosen)} both choose the GPUs: give --include or --exclude alone (HOST:GPUS, "
                          "e.g. localhost:0,1), or --num_gpus/--num_nodes alone")
    for name in ("include", "exclude"):
        if launcher.get(name) is not None:
            check_node_specs(name, launcher[name], hosts, hostfile)
    if "no_ssh" in launcher and "node_rank" not in launcher:
        raise LaunchError("--no_ssh starts this node only: give its --node_rank R (and run the same command on "
                          "every node)")
    if launcher.get("master_addr") == "":
        raise LaunchError("--master_addr is empty: give the first node's address")
    return launcher, trainer


def check_node_specs(name: str, value: str, hosts: Mapping[str, int], hostfile: str | None) -> None:
    """Refuse an ``--include``/``--exclude`` value DeepSpeed's runner cannot use: not NODE_SPEC[@NODE_SPEC ...]
    (:data:`NODE_SPEC`), or naming a host that is not in ``hosts`` (the hostfile's; ``localhost`` without one).
    The runner meets each with a ValueError traceback, and ignores an empty value (training on every GPU)."""
    specs = value.split("@")
    bad = next((spec for spec in specs if not NODE_SPEC.fullmatch(spec)), None)
    if bad is not None:
        raise LaunchError(f"--{name} {value!r}: {bad!r} is not HOST or HOST:GPU[,GPU ...]; give e.g. localhost:0,1 "
                          "(nodes joined by @)")
    unknown = next((spec.split(":")[0] for spec in specs if spec.split(":")[0] not in hosts), None)
    if unknown is not None:
        where = f"--hostfile {hostfile} lists" if hostfile else "without --hostfile the one host is"
        raise LaunchError(f"--{name} {value}: host {unknown} is unknown to deepspeed; {where} {', '.join(hosts)}")


def check_visible_devices(launcher: Mapping[str, str | None], env: Mapping[str, str]) -> None:
    """Refuse ``CUDA_VISIBLE_DEVICES`` with ``--num_gpus``, ``--include`` or ``--exclude`` on one node: DeepSpeed's
    runner then drops the variable (a line among its output) and numbers the GPUs from 0, so ``CUDA_VISIBLE_DEVICES=2,3
    --num-gpus 2`` trains on GPUs 0 and 1, perhaps beside another job. Without those flags it trains on the visible
    GPUs, one rank each; ``--num_gpus N`` alone where the first N visible GPUs are 0 to N-1 (a SLURM allocation's
    ``CUDA_VISIBLE_DEVICES=0,1``) trains on those very GPUs and is no refusal."""
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    chosen = [f"--{name}" for name in GPU_CHOICES if name in launcher]
    gpus = int(launcher.get("num_gpus") or 0)
    if chosen == ["--num_gpus"] and visible.split(",")[:gpus] == [str(gpu) for gpu in range(gpus)]:
        return
    if visible and chosen and "hostfile" not in launcher:
        raise LaunchError(f"CUDA_VISIBLE_DEVICES={visible} with {chosen[0]}: deepspeed would ignore the variable and "
                          f"number the GPUs from 0; leave {chosen[0]} out to train on the visible GPUs (one rank "
                          f"each), or unset CUDA_VISIBLE_DEVICES and name them with --include localhost:{visible}")


def multi_node(launcher: Mapping[str, str | None]) -> bool:
    """Whether the launcher flags start (or join) a job on more than this node."""
    return bool({"hostfile", "node_rank", "master_addr"} & launcher.keys()) or int(launcher.get("num_nodes") or 1) > 1


def over_ssh(launcher: Mapping[str, str | None]) -> bool:
    """Whether the ``deepspeed`` command of :func:`deepspeed_command` starts the other nodes through pdsh/ssh: a
    hostfile of more than one host, as ``--num_nodes``, ``--include`` and ``--exclude`` narrow it, and no
    ``--node_rank`` (which starts this node alone)."""
    if launcher.get("hostfile") is None or "node_rank" in launcher:
        return False
    hosts = list(hostfile_slots(launcher["hostfile"]) or {})
    if launcher.get("include"):
        hosts = [host for host in hosts if host in {spec.split(":")[0] for spec in launcher["include"].split("@")}]
    if launcher.get("exclude"):
        hosts = [host for host in hosts if host not in set(launcher["exclude"].split("@"))]  # whole hosts only
    return min(len(hosts), int(launcher.get("num_nodes") or len(hosts))) > 1


def deepspeed_command(launcher: Mapping[str, str | None], trainer: Sequence[str], gpu: bool,
                      env: Mapping[str, str]) -> list[str]:
    """The ``deepspeed`` command of ``bash launchers/pretrain.sh``: ``--node_rank`` starts this node only (no
    ssh); on CPU one process unless ``--num_gpus`` or ``--include/--exclude`` says otherwise. A single-node job
    without ``--master_port`` (or ``MASTER_PORT``) rendezvouses on a free port; a multi-node one on 29500."""
    port = env_master_port(env) or (DEFAULT_MASTER_PORT if multi_node(launcher) else free_port())
    flags = {"master_port": str(port), **launcher}
    if "node_rank" in flags:
        flags["no_ssh"] = None
    if not gpu and not set(GPU_CHOICES) & flags.keys():
        flags["num_gpus"] = "1"
    cmd = ["deepspeed"]
    for name, value in flags.items():
        cmd += [f"--{name}"] if value is None else [f"--{name}", value]
    # DeepSpeed's own log lines (its command lines; after a rank's one-line error, launch.py's line repeating the
    # whole command) stay out of the output: supervise() says what they would have said
    return [*cmd, "--log_level", "critical", "--module", TRAINER, *trainer]


def refuse_launcher_flags(argv: Sequence[str]) -> None:
    """Raise :class:`LaunchError` for the first launcher flag in a rank's arguments: the processes exist already."""
    for arg in argv:
        name = launcher_flag(arg)
        if name is None:
            continue
        flag = arg.split("=", 1)[0]
        usage = " ".join(filter(None, [f"--{name}", LAUNCHER_FLAGS[name]]))
        where = (f"a flag of `bash {SCRIPT}`; under `deepspeed` use --{name}" if flag != f"--{name}"
                 else "a flag of `deepspeed`, not of the trainer: give it")
        raise LaunchError(f"{flag} is {where} before the script: deepspeed {usage} {SCRIPT} ...")


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def ranks_on_this_node(launcher: Mapping[str, str | None], gpu: bool) -> int | None:
    """How many ranks the ``deepspeed`` command of :func:`deepspeed_command` starts on this node: ``--num_gpus``
    (on CPU 1 without it), else one per visible GPU; None where ``--include``/``--exclude`` or a hostfile decides
    (each node's ranks then set their OpenMP threads themselves, :func:`rank_arguments`)."""
    if "num_gpus" in launcher or not gpu:
        return int(launcher.get("num_gpus") or 1)
    if {"include", "exclude", "hostfile"} & launcher.keys():
        return None
    import torch

    return torch.cuda.device_count()


def rank_arguments(argv: Sequence[str]) -> list[str]:
    """The start-up of one rank of a launched job: check the flags, set the rank's environment (starting the rank
    again where OpenMP has to see it) and return the trainer's arguments, the defaults applied; :func:`main` then
    trains in this process."""
    refuse_launcher_flags(argv)  # first: every rank refuses at once, before the imports below take their time
    from megamythos.runtime.device import local_world_size

    check_run_folder_reaches_every_node(argv, os.environ, local_world_size())
    gpu = has_gpu()
    updates = rank_environment(os.environ, gpu, local_world_size())
    os.environ.update(updates)
    if "OMP_WAIT_POLICY" in updates:  # OpenMP read its settings when torch loaded it: start this rank again
        os.execv(sys.executable, sys.orig_argv)
    if not gpu or "OMP_NUM_THREADS" in updates:  # torch is imported already: its pool follows the variable from here
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return [*trainer_defaults(argv, gpu, os.environ), *argv]


def preflight(trainer: Sequence[str], world_size: int | None) -> None:
    """The trainer's checks that need no process group, run before DeepSpeed starts: flags and the model config;
    on one node (``world_size`` known) also the checkpoint, TensorBoard and metrics paths, the datasets of
    ``--data-path`` or the per-split paths (vocabulary and token ids; the documents' end token where a packed-document
    flag asks for it) and the parallel layout. A mistake is then one
    line in a few seconds, instead of a rank's line after DeepSpeed's start-up. The ranks check all of it again; the
    checkpoint's checksums and the default corpus, which rank 0 builds, are left to them."""
    from megamythos.data.pretraining import document_flags, documents_eod, resolve_data
    from megamythos.training.arguments import parse_args
    from megamythos.training.checkpointing import check_sources
    from megamythos.training.ds_config import bf16_enabled, check_layout, check_template, load_template, resolve_layout
    from megamythos.training.monitor import check_outputs

    args = parse_args(trainer)
    config = args.model_config()
    if world_size is None:  # several nodes (paths may be theirs alone) or an uncounted GPU node: left to the ranks
        return
    check_sources(args.save, args.load, args.finetune, verify=False)  # the ranks verify the checksums at start-up
    check_outputs(args.tensorboard_dir, args.metrics_file, args.profile_dir, args.save)
    sources = args.data_sources()
    if prefixes := sources.prefixes():
        sources.check_found()
        resolve_data(prefixes, config.vocab_size, args.data_cache_dir)
        documents_eod(document_flags(args.to_dict()), prefixes, cache_dir=args.data_cache_dir)
    template = load_template(args.ds_config)
    check_template(args.ds_config, template, args)
    check_layout(args, resolve_layout(template, args, world_size), config, bf16_enabled(template, args.bf16))


def check_run_folder_reaches_every_node(argv: Sequence[str], env: Mapping[str, str], local_ranks: int) -> None:
    """Refuse (:class:`LaunchError`) a rank of a job on several nodes (``WORLD_SIZE`` above this node's
    ``local_ranks``) that would take its run folder by default: ``RUN_DIR`` set where the job was launched reaches
    another node's ranks only through DeepSpeed's ``.deepspeed_env`` (its runner exports a few variable families
    alone), so each node would save into its own ``runs/tiny``."""
    if int(env.get("WORLD_SIZE", "1")) > local_ranks and not given(argv, "--save") and "RUN_DIR" not in env:
        raise LaunchError("a job on several nodes needs --save DIR, a folder every node sees: RUN_DIR set where "
                          "the job was launched does not reach the other nodes' ranks (unless DeepSpeed's "
                          ".deepspeed_env lists it), and each node would save into its own runs/tiny")


def launch(argv: Sequence[str]) -> int:
    """``bash launchers/pretrain.sh``: run the ``deepspeed`` launcher on the trainer with the defaults applied."""
    if shutil.which("deepspeed") is None:  # `python -m megamythos.training.launch` of an environment not activated
        raise LaunchError(f"`deepspeed` is not on PATH, so the ranks cannot be started: put the environment "
                          f"megamythos is installed in first on PATH (export PATH={Path(sys.executable).parent}:$PATH, "
                          "or activate it)")
    launcher, trainer = split_launcher_flags(argv)
    gpu = has_gpu()
    if multi_node(launcher) and "node_rank" not in launcher and not gpu:  # pdsh starts the other nodes from here
        raise LaunchError("this node has no GPU, so `bash launchers/pretrain.sh --hostfile ...` would give every "
                          "node the CPU debug run's defaults (one process per node, 128-token sequences); launch "
                          "from a GPU node of the job, run it on each node with --node_rank R, or use the design's "
                          "form (deepspeed --hostfile FILE launchers/pretrain.sh ...), whose ranks choose their "
                          "defaults on their own node")
    if gpu:
        check_visible_devices(launcher, os.environ)
    processes = int(launcher.get("num_gpus") or 1)
    os.environ.update(rank_environment(os.environ, gpu, ranks_on_this_node(launcher, gpu)))
    defaults = trainer_defaults(trainer, gpu, os.environ)
    if over_ssh(launcher):  # each flag goes through every node's shell (runtime/remote_words.py), the user's first
        check_remote_words([*trainer, *defaults], os.getcwd())
    trainer = [*defaults, *trainer]
    one_node = not multi_node(launcher) and not {"include", "exclude"} & launcher.keys()
    preflight(trainer, processes if one_node and not gpu else None)
    cmd = deepspeed_command(launcher, trainer, gpu, os.environ)
    logger.info("%s", shlex.join(cmd))
    local_ranks = processes if one_node and (not gpu or "num_gpus" in launcher) else None
    return supervise(cmd, Path(flag_value(trainer, "--save")) / "latest", local_ranks)


def training_ranks() -> list:
    """The trainer processes (``python -u -m megamythos.training.pretrain``) among this process's descendants."""
    import psutil

    def is_rank(p: psutil.Process) -> bool:
        try:
            args = p.cmdline()
        except psutil.Error:
            return False
        return "-m" in args and args.index("-m") + 1 < len(args) and args[args.index("-m") + 1] == TRAINER

    return [p for p in psutil.Process().children(recursive=True) if is_rank(p)]


def adopt_orphans() -> None:
    """Become the parent of descendants whose parent dies (Linux ``PR_SET_CHILD_SUBREAPER``), so that the ranks
    stay visible and can be waited for when the deepspeed runner dies of a signal first."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        logger.warning("cannot adopt orphaned ranks on this system; a group signal may return before they save")


def records_prefix(pid: int) -> str:
    """The name with which the exit-record folder of launcher ``pid`` of this host starts (a random part follows)."""
    return f"{RECORDS_PREFIX}{socket.gethostname()}.{pid}-"


def remove_stale_records() -> list[Path]:
    """Remove the exit-record folders that launchers of this host left when they were killed (``kill -9``, the
    out-of-memory killer, a scheduler's kill after its grace period: no ``TemporaryDirectory`` clean-up runs), one
    per killed launch; returns those removed. A folder is stale when its launcher's process is gone; those of other
    hosts (a shared temporary directory) and of live launchers are left alone."""
    from megamythos.data.atomic import pid_alive  # not at import: `--help` runs without the dependencies

    host = f"{RECORDS_PREFIX}{socket.gethostname()}."
    removed = []
    for path in Path(tempfile.gettempdir()).glob(glob.escape(host) + "*-*"):
        pid = path.name[len(host):].partition("-")[0]
        if pid.isdigit() and path.is_dir() and path.stat().st_uid == os.getuid() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def supervise(cmd: list[str], latest: Path, local_ranks: int | None = None) -> int:
    """Run ``cmd`` (the deepspeed launcher) and return its exit code. On a signal that stops a rank
    (:attr:`~megamythos.training.signals.GracefulExit.SIGNALS`: SIGTERM, SIGINT, SIGHUP, SIGUSR1), send SIGTERM
    to the training ranks (or to the launcher when none is local), wait until they and the launcher have ended,
    and return 0 if a checkpoint was completed after the signal (``latest`` rewritten) or the ranks stopped with
    one saved just before it (:func:`stopped_saved`), else 1. The same when
    the runner alone is killed by a signal: its ranks notice, save and stop, and are waited for. When the runner
    exits 0, the local ranks' exit records must say they finished with 0 (the runner also exits 0 when its
    ``launch.py`` is killed, ranks and all); otherwise it returns 1 with a line naming the ranks.

    ``local_ranks``: the job's rank count where all of them run here (a single-node job); once each of them has
    recorded exit code 0 and ended, the job is over, and :func:`wait_for_runner` ends the runner instead of
    waiting for it."""
    remove_stale_records()
    with tempfile.TemporaryDirectory(prefix=records_prefix(os.getpid())) as records:
        return _supervise(cmd, latest, Path(records), local_ranks)


def _rank_records(records: Path) -> dict[str, dict[str, str]]:
    """{rank: {"exit": code, "error": message, "saved": tag}} of the exit records
    (:mod:`megamythos.training.process_exit`) in ``records``; a rank that was killed has no "exit", and "saved" is
    there once `latest` names the state a rank stops with."""
    found: dict[str, dict[str, str]] = {}
    for start in records.iterdir():
        if not start.suffix:  # "<pid>" names the rank; "<pid>.exit", "<pid>.error", "<pid>.saved" follow it
            kinds = {kind: start.with_name(f"{start.name}.{kind}") for kind in ("exit", "error", "saved")}
            found[start.read_text()] = {kind: path.read_text() for kind, path in kinds.items() if path.is_file()}
    return dict(sorted(found.items(), key=lambda item: int(item[0]) if item[0].isdigit() else -1))


def unfinished_ranks(records: Path) -> list[str]:
    """The local ranks whose exit records show no clean end, each as ``rank R ended without finishing`` (a start
    record only: killed) or ``rank R exited with code C``."""
    found = []
    for rank, ended in _rank_records(records).items():
        if "exit" not in ended:
            found.append(f"rank {rank} ended without finishing")
        elif ended["exit"] != "0":
            found.append(f"rank {rank} exited with code {ended['exit']}")
    return found


def rank_errors(records: Path) -> list[str]:
    """``rank R: MESSAGE`` for the user errors that ranks other than 0 met on their own (none when rank 0 ended
    with a user error: it printed it, and the others met the same)."""
    ranks = _rank_records(records)
    if ranks.get("0", {}).get("exit") == "2":
        return []
    return [f"rank {rank}: {ended['error']}" for rank, ended in ranks.items() if "error" in ended]


def stopped_saved(records: Path) -> bool:
    """Whether every local rank recorded that `latest` names the state it stopped with
    (:meth:`megamythos.training.pretrain.Trainer.record_saved`): its last save came before a signal that was
    then caught (the end-of-run evaluation, the check after a periodic save), and nothing was left to save."""
    ranks = _rank_records(records)
    return bool(ranks) and all("saved" in ended for ended in ranks.values())


def finished_cleanly(records: Path, local_ranks: int) -> bool:
    """Whether ``local_ranks`` ranks recorded exit code 0 in ``records`` and their processes have ended (gone, or
    zombies that ``launch.py`` has not reaped yet)."""
    import psutil

    pids = [start.name for start in records.iterdir() if not start.suffix]
    if len(pids) < local_ranks:
        return False
    for pid in pids:
        exit_record = records / f"{pid}.exit"
        if not exit_record.is_file() or exit_record.read_text() != "0":
            return False
        try:
            if psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def file_identity(path: Path) -> tuple[int, int] | None:
    """(inode, modification time in ns) of ``path``, None when it does not exist: ``latest`` is written to a temporary
    file renamed over it, so a save after a signal shows as another identity, whatever the clocks of the file
    server and this host say."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def wait_for_runner(proc: subprocess.Popen, records: Path, local_ranks: int | None,
                    signalled: Sequence[object] = ()) -> int:
    """The runner's exit code; or 0 as soon as ``local_ranks`` ranks have finished cleanly
    (:func:`finished_cleanly`), after ending the runner and its ``launch.py`` with SIGKILL: ``launch.py`` polls its
    ranks once a second and sleeps once more after the last has ended, then it and the runner tear torch down:
    seconds after the job is over. Their process group holds nothing else (each rank joined the supervisor's).
    Not after a signal (``signalled`` not empty): the runner's own code then tells whether it stayed out of reach."""
    while True:
        try:
            return proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            if local_ranks and not signalled and finished_cleanly(records, local_ranks):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return 0


def _supervise(cmd: list[str], latest: Path, records: Path, local_ranks: int | None) -> int:
    """:func:`supervise` with the ranks writing their exit records into ``records``."""
    import psutil

    from megamythos.training.signals import SUPERVISOR_GROUP_ENV, GracefulExit

    adopt_orphans()
    # the runner leads a process group of its own (setpgid(0, 0)); Popen's process_group needs Python 3.11
    own_group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    env = {**os.environ, SUPERVISOR_GROUP_ENV: str(os.getpgrp()), EXIT_RECORDS_ENV: str(records)}
    proc = subprocess.Popen(cmd, env=env, **own_group)
    signalled: list[tuple[int, int] | None] = []  # `latest` when the signal came (file_identity)
    ranks: list = []

    def forward(signum: int, frame: object) -> None:
        if not signalled:
            logger.info("received %s: asking the ranks to save a checkpoint and stop", signal.Signals(signum).name)
            signalled.append(file_identity(latest))
        local = training_ranks()
        ranks.extend(local)
        for target in local or ([psutil.Process(proc.pid)] if proc.poll() is None else []):
            try:
                target.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass

    for signum in GracefulExit.SIGNALS:  # SIGUSR1 too (a scheduler's warning), whose default action ends us unheard
        signal.signal(signum, forward)
    code = wait_for_runner(proc, records, local_ranks, signalled)
    if code < 0 and not signalled:  # the runner alone died of a signal: its ranks (adopted) save and stop
        logger.info("the deepspeed runner ended by %s; waiting for the ranks to save", signal.Signals(-code).name)
        signalled.append(file_identity(latest))
        ranks.extend(training_ranks())
    if not signalled:
        if code == 0:  # launch.py killed (alone: its adopted ranks save and stop; or with them) exits 0 too
            left = training_ranks()  # adopted: not other descendants, such as a compile worker that lingers
            if left:
                logger.info("the deepspeed runner exited while %d of its ranks run on (its launch.py ended?); "
                            "waiting for them to save and stop", len(left))
            psutil.wait_procs(left)
            lost = unfinished_ranks(records)
            if lost:
                logger.error("%s", failed_run(code, latest, lost))
                return 1
        else:
            for line in rank_errors(records):  # what only another rank met, which rank 0 could not print
                print(f"error: {line}", file=sys.stderr, flush=True)
            if code != 2:  # 2: a rank printed its one-line user error, and that is all the user sees
                logger.error("%s", failed_run(code, latest))
        return code
    # the runner may have died of the same signal (a signal to the process group): its launch.py and ranks are
    # adopted now; ranks that were still starting (not signalled yet) are stopped too, and all are waited for
    left = psutil.Process().children(recursive=True)
    for p in left:
        if p not in ranks:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
    psutil.wait_procs(left + ranks)
    saved = latest.is_file() and file_identity(latest) != signalled[0]  # rewritten (a new file) since the signal
    before = not saved and latest.is_file() and stopped_saved(records)  # the signal came after the last save
    outcome = f"checkpoint {latest.read_text().strip()} saved" if saved else \
        f"checkpoint {latest.read_text().strip()} saved just before the signal; the ranks stopped with it" if before \
        else "no checkpoint was saved after the signal"
    logger.info("ranks finished (deepspeed exited with code %d); %s", proc.returncode, outcome)
    return 0 if saved or before else 1


def failed_run(code: int, latest: Path, lost: Sequence[str] = ()) -> str:
    """The launcher's line when the deepspeed launcher fails with ``code`` (not 2), in place of ``launch.py``'s own
    line repeating the command, or exits 0 while ranks did not finish (``lost``, from :func:`unfinished_ranks`). A
    rank that died of signal N makes ``launch.py`` exit with -N, seen as 256 − N."""
    ended = ""
    if lost:
        ended = f", but {', '.join(lost)} (killed with DeepSpeed's launch.py?)"
    elif code > 128 and 256 - code in {int(s) for s in signal.Signals}:
        ended = f" (a rank ended by {signal.Signals(256 - code).name}; DeepSpeed stopped the others)"
    where = (f"the last checkpoint, {latest.read_text().strip()}, resumes with the same command" if latest.is_file()
             else "no checkpoint was saved")
    return f"deepspeed exited with code {code}{ended}; {where}"


def missing_dependency(err: ModuleNotFoundError) -> str:
    """The one line for a launch whose ``python`` (the first on PATH, as bash runs this file) lacks a package
    megamythos needs: another environment than the one it was installed into."""
    return (f"{sys.executable} cannot import {err.name!r}, which megamythos needs: run this with the environment "
            "megamythos is installed in first on PATH (`make install`, then `source .venv/bin/activate`)")


def usage() -> str:
    """``bash launchers/pretrain.sh --help``: the launcher's own flags, then every trainer flag."""
    from megamythos.training.arguments import build_parser

    flags = "\n".join(f"  --{name.replace('_', '-')}{' ' + metavar if metavar else ''}"
                      for name, metavar in LAUNCHER_FLAGS.items())
    return (f"usage: bash {SCRIPT} [launcher flags] [trainer flags]\n"
            f"       deepspeed [deepspeed flags] {SCRIPT} [trainer flags]\n"
            "       python -m megamythos.training.launch [launcher flags] [trainer flags]  (the bash form, from an\n"
            "       installed package without a checkout)\n\n"
            "launcher flags (bash form; `-` or `_`; under `deepspeed` give them to deepspeed before the script):\n"
            f"{flags}\n  (single node without --master-port: a free port; CPU: one process unless --num-gpus)\n\n"
            "defaults for what you leave out: the run folder $RUN_DIR (runs/tiny) holds checkpoints/ (--save and\n"
            "--load), tensorboard/ and metrics.jsonl (with --save DIR: inside DIR); on CPU ds_configs/cpu-debug.json,\n"
            "--seq-length 128, --train-iters 400, a checkpoint and a validation every 100 steps\n\n"
            + build_parser().format_help())


def started_as_rank(env: Mapping[str, str]) -> bool:
    """Whether this process is a rank a launcher started: every launcher (DeepSpeed's ``launch.py``, torchrun,
    ``slurm.sbatch``'s srun tasks) sets both ``LOCAL_RANK`` and ``RANK``. ``LOCAL_RANK`` alone is a shell's
    left-over (an ``export`` from another job's recipe), which made ``bash launchers/pretrain.sh`` train as one
    rank: its launcher flags refused as given under ``deepspeed``, or, without them, one process on a GPU node."""
    return "LOCAL_RANK" in env and "RANK" in env


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``launchers/pretrain.sh``; a rank when a launcher started it (:func:`started_as_rank`), else
    the outer launcher."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rank = started_as_rank(os.environ)
    try:
        if not rank and {"-h", "--help"} & set(argv):
            print(usage(), flush=True)
            return 0
        if not rank:
            logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
            return launch(argv)
        trainer = rank_arguments(argv)
        from megamythos.training.pretrain import main as train  # torch, DeepSpeed: where they are missing
    except (UserError, ModuleNotFoundError) as err:
        if os.environ.get("RANK", "0") == "0":  # once per job, not once per rank
            print(f"error: {missing_dependency(err) if isinstance(err, ModuleNotFoundError) else err}",
                  file=sys.stderr, flush=True)
        return 2
    except BrokenPipeError:  # `--help | head`: stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:  # checked before the ranks start: a path too long for the system is bad input too
        if (line := path_too_long(err)) is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        return 2
    # outside the try: the trainer reports its own errors, and a module it misses while it trains (an optional
    # one) is its traceback, not the line about a python without megamythos's dependencies
    return train(trainer)


if __name__ == "__main__":  # python -m megamythos.training.launch: launchers/pretrain.sh without a checkout
    end_process(main())
