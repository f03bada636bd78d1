"""glibc's heap thresholds and heap count fixed at start-up (common/memory.py): a block of a
few hundred KiB comes from the heap, threads share one heap if asked, the environment wins."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from common.memory import BY_HAND

LIBC = ctypes.CDLL(None)
pytestmark = pytest.mark.skipif(not hasattr(LIBC, "mallopt") or not hasattr(LIBC, "mallinfo2"),
                                reason="needs glibc (mallopt, mallinfo2)")

#: Run in a fresh interpreter: whether tune_allocator took, and whether a 1 MiB block was
#: mapped on its own (mallinfo2's hblkhd grew by it) rather than taken from the heap.
PROBE = """
import ctypes, sys
from common.memory import tune_allocator

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
tuned = tune_allocator()
before = libc.mallinfo2().hblkhd
block = bytearray(1 << 20)
mapped = libc.mallinfo2().hblkhd - before >= 1 << 20
print(tuned, mapped)
"""


def probe(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in BY_HAND}
    out = subprocess.run([sys.executable, "-c", PROBE], env=clean | env, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.split()


def test_a_large_block_comes_from_the_heap_once_tuned() -> None:
    assert probe() == ["True", "False"]


def test_thresholds_set_by_hand_are_left_alone() -> None:
    assert probe(MALLOC_MMAP_THRESHOLD_="131072") == ["False", "True"]


#: Run in a fresh interpreter: whether a new thread's 256 KiB block came from the main heap
#: (below the program break) rather than a heap of the thread's own (mapped far above it).
ARENA_PROBE = """
import ctypes, sys, threading
from common.memory import tune_allocator

libc = ctypes.CDLL(None)
libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
libc.malloc.argtypes, libc.sbrk.argtypes = [ctypes.c_size_t], [ctypes.c_long]
libc.free.argtypes = [ctypes.c_void_p]
tune_allocator(arenas=int(sys.argv[1]) if len(sys.argv) > 1 else None)
seen = []

def allocate():
    block = libc.malloc(256 << 10)
    seen.append(block < libc.sbrk(0))
    libc.free(block)

thread = threading.Thread(target=allocate)
thread.start()
thread.join()
print(seen[0])
"""


def arena_probe(*args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in (*BY_HAND, "MALLOC_ARENA_MAX")}
    out = subprocess.run([sys.executable, "-c", ARENA_PROBE, *args], env=clean | env,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_one_heap_when_asked_threads_share_the_main_heap() -> None:
    assert arena_probe("1") == "True"
    assert arena_probe() == "False"  # NOTE: the check can fail: a thread gets a heap of its own


def test_an_arena_count_set_by_hand_wins() -> None:
    assert arena_probe("1", MALLOC_ARENA_MAX="4") == "False"
