"""zoo/allocator.py: the heap policy of the zoo's commands (issue 22)."""
from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

from zoo.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MMAP_THRESHOLD, TRIM_THRESHOLD, keep_freed_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")


class FakeMallopt:
    def __init__(self, ok: int = 1):
        self.calls, self.ok = [], ok

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.ok


def test_sets_glibc_thresholds():
    fake = FakeMallopt()
    state = keep_freed_memory({}, fake)
    assert fake.calls == [(M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 2**31 - 1)]
    assert all(ctypes.c_int(v).value == v for v in (MMAP_THRESHOLD, TRIM_THRESHOLD))  # mallopt's argument is an int
    assert "freed memory kept" in state and "32 MiB" in state


@pytest.mark.parametrize("environ, reason", [
    ({"ZOO_MALLOC": "system"}, "ZOO_MALLOC=system"),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_ is set"),
    ({"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "1"}, "MALLOC_MMAP_THRESHOLD_ is set"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "jemalloc"),
    ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, "tcmalloc"),
])
def test_leaves_a_tuned_or_other_allocator_alone(environ, reason):
    fake = FakeMallopt()
    state = keep_freed_memory(environ, fake)
    assert fake.calls == [] and "system policy" in state and reason in state


def test_refused_thresholds_are_reported():
    assert "refused" in keep_freed_memory({}, FakeMallopt(ok=0))


def test_bad_choice_names_the_variable_and_the_values():
    with pytest.raises(ValueError, match=r"ZOO_MALLOC='fast'.*'keep'.*'system'"):
        keep_freed_memory({"ZOO_MALLOC": "fast"}, FakeMallopt())


def test_cli_reports_bad_choice_in_one_line():
    out = subprocess.run([sys.executable, "-m", "zoo.cli", "bench", "speed", "--help"], capture_output=True, text=True,
                         env={"ZOO_MALLOC": "fast", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1
    assert out.stderr.splitlines()[0].startswith("zoo bench: error: ZOO_MALLOC='fast'")


# glibc's own account (mallinfo2) of a 20 MiB block, malloc'ed and freed through the C library in a fresh process
# (torch's memalign'ed blocks add fragmentation that makes page-fault counts a poor witness): by default the block
# is mmap'ed (hblkhd grows) and handed back when freed; under the policy it comes from the heap (arena grows) and
# stays there, free for the next step.
_ONE_BLOCK = """
import ctypes, sys
from zoo.allocator import keep_freed_memory
print(keep_freed_memory(), file=sys.stderr)

class Info(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype, libc.malloc.argtypes = Info, ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
start = libc.mallinfo2()
block = libc.malloc(20 * 2**20)
held = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(held.hblkhd - start.hblkhd, held.arena - start.arena, after.arena - start.arena, after.fordblks - start.fordblks)
"""


def _one_block(choice: str) -> tuple[int, ...]:
    out = subprocess.run([sys.executable, "-c", _ONE_BLOCK], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "ZOO_MALLOC": choice})
    assert ("freed memory kept" if choice == "keep" else "ZOO_MALLOC=system") in out.stderr
    return tuple(int(v) for v in out.stdout.split())


@glibc
def test_freed_blocks_stay_in_the_heap():
    block = 20 * 2**20
    mapped, arena_held, arena_after, free_after = _one_block("system")
    assert mapped >= block and arena_after < block  # glibc's default: its own mapping, returned when freed
    mapped, arena_held, arena_after, free_after = _one_block("keep")
    assert mapped == 0 and arena_held >= block  # the policy: from the heap ...
    assert arena_after >= block and free_after >= block  # ... and kept there, free, after it is freed


_POLICY_AFTER = """
import sys
from zoo import allocator, cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
print(allocator.policy())
"""


@pytest.mark.parametrize("argv, kept", [(["bench", "--help"], True), (["fit", "--help"], True), (["models", "vit_tiny*"], False)])
def test_training_and_bench_commands_apply_the_policy(argv, kept):
    out = subprocess.run([sys.executable, "-c", _POLICY_AFTER, *argv], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    last = out.stdout.strip().splitlines()[-1]
    expected = "freed memory kept" if kept and platform.libc_ver()[0] == "glibc" else "system policy"
    assert expected in last, (argv, last)
