"""glibc's heap thresholds fixed at start-up (common/memory.py): a block of a few hundred KiB then
comes from the heap, not a mapping of its own, and the environment's settings win."""

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
