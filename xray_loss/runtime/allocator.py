"""Keep freed memory in the process instead of handing it back to the OS at every step.

glibc's malloc serves large blocks (above a dynamic threshold, a few MB) with mmap and returns
them on free; convolution activations are exactly such blocks, so a CPU training step spends a
large share of its time in page faults for memory it frees and asks for again a moment later.
Raising the mmap and trim thresholds (what PyTorch's CPU tuning guide achieves with jemalloc or
tcmalloc) halved the step time of the small CNN at 128 px on a 2-core machine
(bench/README.md). The cost is that the process keeps its peak heap until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB


def retain_freed_memory() -> bool:
    """Raise glibc's mmap/trim thresholds; a no-op (False) on other C libraries."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the thresholds; the allocator is left as it was")
    return ok
