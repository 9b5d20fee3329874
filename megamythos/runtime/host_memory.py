"""The host allocator of a CPU process that runs the model over and over: freed tensor memory is kept for reuse.

A training step, or an evaluation batch, allocates and frees the same tensors as the one before. glibc's malloc
serves blocks above its mmap threshold (128 KiB, raised at run time to the largest block freed so far) with a fresh
``mmap`` and returns them at ``free``, and gives the heap's free top back above the trim threshold (twice the mmap
threshold), so every step page-faults its activations in again: the default run's model took 17,000 minor faults
and 29 ms of kernel time per 0.21-s step (bench/README.md). :func:`keep_freed_memory` turns malloc's ``mmap``
off (``M_MMAP_MAX`` 0: glibc would map every block above 32 MiB per allocation even at its highest threshold, such
as the small preset's expert-weight gradients) and sets the trim threshold to 2 GiB, so every block comes from the
heap and stays there, as a GPU caching allocator keeps it. The process keeps its peak memory resident (it needs it
again at the next step); what it frees is reused, not returned to the kernel, unless more than 2 GiB is free at the
heap's top. The trainer and the inference command lines call it on CPU; a library user's process is left alone.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h) and the values set.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
MMAP_MAX = 0  # blocks mapped at a time: none (the main heap serves them; a thread's arena still maps what it must)
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int
# Settings of the user's that this leaves alone (glibc reads them at start-up).
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory() -> str:
    """Turn glibc's per-block mmap off and raise its trim threshold for this process; returns what was done, for
    the log.

    Nothing changes where the C library is not glibc, or where the environment sets malloc's thresholds itself
    (``MALLOC_*_`` variables, or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``).
    """
    if platform.libc_ver()[0] != "glibc":
        return "the C library's default (not glibc)"
    if any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "glibc malloc as the environment sets it"
    mallopt = ctypes.CDLL(None).mallopt
    if not (mallopt(M_MMAP_MAX, MMAP_MAX) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        logger.warning("glibc refused the malloc settings: freed memory goes back to the kernel every step")
        return "glibc malloc's default (mallopt refused)"
    return "freed memory kept (glibc malloc: no per-block mmap, trim threshold 2 GiB)"
