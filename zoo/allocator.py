"""The CPU heap policy of the zoo's commands: keep freed activations for the next step (issue 22).

PyTorch's CPU tensors come from the C library's malloc. glibc serves every block above its mmap threshold (128 KiB
at the start, raised as such blocks are freed, at most 32 MiB) with a fresh mmap and returns it to the system when
it is freed; it also trims the top of its heap once more than twice that threshold lies free there. A training
step frees most of its activations before the next step allocates them again, so under that policy every step
pays page faults (and the kernel's zeroing) to touch memory it had a moment ago. Profiled on the 2-core Xeon:
a GELU of ViT-S/16's forward took 48-74 ms when its output was fresh pages, 28-30 ms on reused ones.

`keep_freed_memory()` sets glibc's mmap threshold to its largest value (32 MiB: blocks up to that size come from
the heap) and its trim threshold to 2 GiB (freed heap memory is kept for reuse instead of handed back), with
`mallopt`, as the environment variables MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ would. The peak resident
memory of a step stays what it was (the same blocks are reused); the process keeps that peak until it exits.
`zoo fit` / `validate` / `test` / `predict`, `zoo bench` and `zoo compare` call it at their start.

It does nothing, and says why, where

- ZOO_MALLOC=system is set (the opt-out),
- the user tuned glibc's malloc already (any MALLOC_*_ variable, or malloc tunables in GLIBC_TUNABLES),
- another allocator is preloaded (LD_PRELOAD naming jemalloc, tcmalloc or mimalloc),
- the C library is not glibc (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable, Mapping

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int: ~2 GiB is the most it can keep at the heap's top
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_state: str | None = None  # what the first call in this process did


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def skip_reason(environ: Mapping[str, str]) -> str | None:
    """Why the policy should leave the allocator alone in this environment, or None."""
    choice = environ.get("ZOO_MALLOC", "keep").lower()
    if choice not in ("keep", "system", ""):
        raise ValueError(f"ZOO_MALLOC={environ['ZOO_MALLOC']!r}: use 'keep' (the default) or 'system'")
    if choice == "system":
        return "ZOO_MALLOC=system"
    tuned = sorted(k for k in environ if k.startswith("MALLOC_") and k.endswith("_"))
    if tuned:
        return f"{tuned[0]} is set"
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets malloc tunables"
    preload = environ.get("LD_PRELOAD", "").lower()
    for name in OTHER_ALLOCATORS:
        if name in preload:
            return f"LD_PRELOAD loads {name}"
    return None


def keep_freed_memory(environ: Mapping[str, str] | None = None,
                      mallopt: Callable[[int, int], int] | None = None) -> str:
    """Apply the policy once per process; returns what it did, for logs and benchmark headers."""
    global _state
    process_wide = environ is None and mallopt is None  # tests pass both to check the decision without applying it
    if process_wide and _state is not None:
        return _state
    reason = skip_reason(os.environ if environ is None else environ)
    if reason is None:
        mallopt = mallopt or _glibc_mallopt()
        if mallopt is None:
            reason = f"the C library is {platform.libc_ver()[0] or platform.system()}, not glibc"
        elif not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
            reason = "glibc's mallopt refused the thresholds"
    state = (f"malloc: system policy ({reason})" if reason else
             f"malloc: freed memory kept (glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim {(TRIM_THRESHOLD + 1) >> 30} GiB)")
    if process_wide:
        _state = state
    return state


def policy() -> str:
    """What `keep_freed_memory` did in this process ('malloc: system policy (not applied)' before any call)."""
    return _state or "malloc: system policy (not applied)"
