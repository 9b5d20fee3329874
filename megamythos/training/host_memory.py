"""The host allocator of a CPU training process: freed tensor memory is kept for the next step.

A training step allocates and frees the same tensors every step. glibc's malloc serves blocks above its mmap
threshold (128 KiB, raised at run time to the largest block freed so far) with a fresh ``mmap`` and returns them
at ``free``, and gives the heap's free top back above the trim threshold (twice the mmap threshold), so every
step page-faults its activations in again: the default run's model took 17,000 minor faults and 29 ms of kernel
time per 0.21-s step (bench/README.md). :func:`keep_freed_memory` sets the mmap threshold to glibc's upper bound
(32 MiB on 64-bit) and the trim threshold to 2 GiB, so those blocks come from the heap and stay there, as a GPU
caching allocator keeps them; the process keeps its peak step memory resident (it needs it again at the next step).
Blocks above 32 MiB are still mapped per allocation.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h) and the values set.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc refuses more: HEAP_MAX_SIZE / 2 on 64-bit
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int
# Settings of the user's that this leaves alone (glibc reads them at start-up).
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory() -> str:
    """Set glibc's mmap and trim thresholds for this process; returns what was done, for the log.

    Nothing changes where the C library is not glibc, or where the environment sets malloc's thresholds itself
    (``MALLOC_*_`` variables, or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``).
    """
    if platform.libc_ver()[0] != "glibc":
        return "the C library's default (not glibc)"
    if any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "glibc malloc as the environment sets it"
    mallopt = ctypes.CDLL(None).mallopt
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        logger.warning("glibc refused the malloc thresholds: freed memory goes back to the kernel every step")
        return "glibc malloc's default (mallopt refused)"
    return f"freed memory kept (glibc malloc: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold 2 GiB)"
