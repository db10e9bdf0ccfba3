"""Process-wide memory settings for the CPU, which the commands apply and the library leaves alone."""

from __future__ import annotations

import ctypes
import sys


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (mmap off, no trimming); whether it took (Linux with glibc).

    torch has no caching allocator on the CPU. glibc serves every block above its mmap threshold (128 KiB at first,
    rising with the blocks freed, at most 32 MB) with a fresh mapping that it unmaps when the block is freed, and
    gives the top of its heap back to the system whenever more than twice that threshold is free there; either way
    the next tensor of that size is page-faulted in again. A training step does it for its large tensors (at the
    seed size the head's logits, its gradient and the weight's bfloat16 copy, 37-110 MB each): with this the
    seed-size step under bfloat16 autocast runs 1.56x as fast on the AMD kind (`benchmarks/bench_step_settings.py`;
    peak memory the same: the step reaches its peak every time anyway). A decoding step of `smolite serve` does it
    for its logits and their processed copies (2.3 MB each for 8 rows of the seed size's 72000 columns).
    It changes the whole process, so `smolite train` and `smolite serve` call it and the library does not; call it
    yourself before training or serving in your own script. Freed memory then stays with the process: its resident
    size stays at its peak.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


__all__ = ["keep_freed_memory"]
