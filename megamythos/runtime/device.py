"""The device a command line runs its model on: ``--device`` checked before anything is built or loaded; the
processes and memory a launched rank shares its host and device with; the CPU's model and bf16 instructions."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megamythos.errors import UserError


class DeviceError(UserError, ValueError):
    """``--device`` names no device this machine has."""


def default_device() -> str:
    """``--device``'s default: ``cuda`` where torch sees a CUDA device, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:N``) as a device this machine has; anything else raises
    :class:`DeviceError` in one line saying what to pass."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"--device {name!r} is not a device name; use cpu or cuda") from err
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"--device {name}: these command lines run on cpu or cuda")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        why = "sees no CUDA device" if torch.backends.cuda.is_built() else "is a CPU-only build"
        raise DeviceError(f"--device {name}: this machine's torch {why}; use --device cpu")
    if device.index is not None and device.index >= count:
        raise DeviceError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def local_world_size() -> int:
    """Ranks on this host: DeepSpeed's launcher sets ``LOCAL_SIZE``, torchrun ``LOCAL_WORLD_SIZE``; 1 alone."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)


def device_memory_bytes() -> int | None:
    """Memory of this rank's CUDA device (``LOCAL_RANK``), None without CUDA (the model then lives on the host)."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory


def cpu_model() -> dict[str, Any]:
    """The CPU's model name and its bf16 matmul instructions (from /proc/cpuinfo on Linux), which decide the
    bf16 ceiling: AMX tiles (``amx_bf16``) reach roughly 4x what AVX-512 ``avx512_bf16`` does per core."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return {"model_name": platform.processor() or platform.machine()}
    flags = set(info.get("flags", "").split())
    return {"model_name": info.get("model name", platform.machine()),
            "bf16_isa": sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16", "avx_vnni"})}


def collective_device() -> torch.device:
    """Where a tensor of one of our own collectives (the trainer's, the distributed norms') lives: this rank's CUDA
    device under NCCL, which serves CUDA tensors only, else the CPU (gloo)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
