"""The host process's memory: what it holds at most, and handing freed memory back.

XLA's programs allocate their temporary buffers from the C heap, and glibc keeps freed heap
memory for reuse rather than returning it to the system, so after a large program has run
once (or compiled) the process stays that large. :func:`release_freed_memory` returns the
free part (glibc's ``malloc_trim``), which lowers the resident memory that the next program
adds its buffers to; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
import sys


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith('linux'):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        return libc.malloc_trim
    except (OSError, AttributeError):   # not glibc (musl has no malloc_trim)
        return None


def release_freed_memory() -> bool:
    """Returns the C heap's free memory to the system; whether it could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def peak_resident_mb() -> float:
    """The largest resident memory of this process so far, in MB.

    On Linux this is the program's own high-water mark (``VmHWM``): the kernel's
    ``ru_maxrss`` also counts the memory of the parent that started the process, up to the
    moment it was replaced by this program, which overstates a child started by a large
    process (a benchmark, a notebook).
    """
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == 'darwin' else peak / 1024
