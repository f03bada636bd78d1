"""glibc's heap parameters set at start-up (common/memory.py): a block of a few hundred KiB then
comes from the heap, not a mapping of its own; a gateway's threads share two heaps; and the
environment's settings win."""

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


#: Run in a fresh interpreter with the tuning named in argv[1]: whether it all took, and how
#: many heaps glibc made for eight threads that each allocate while the others hold theirs.
HEAPS = """
import ctypes, sys, tempfile, threading
from common import memory

tuned = memory.tune_allocator(getattr(memory, sys.argv[1]))
barrier = threading.Barrier(8)
blocks = []

def allocate():
    blocks.append(bytearray(1 << 16))  # past pymalloc: from this thread's heap
    barrier.wait()

threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile() as report:
    stream = ctypes.c_void_p(libc.fopen(report.name.encode(), b"w"))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(tuned, report.read().count(b"<heap nr="))
"""


def probe(*argv: str, code: str = PROBE, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in BY_HAND.values()}
    out = subprocess.run([sys.executable, "-c", code, *argv], env=clean | env,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.split()


def test_a_large_block_comes_from_the_heap_once_tuned() -> None:
    assert probe() == ["True", "False"]


def test_thresholds_set_by_hand_are_left_alone() -> None:
    assert probe(MALLOC_MMAP_THRESHOLD_="131072") == ["False", "True"]


def test_a_gateways_threads_share_two_heaps() -> None:
    tuned, heaps = probe("GATEWAY_TUNED", code=HEAPS)
    assert tuned == "True"
    assert int(heaps) == 2


def test_other_processes_keep_a_heap_per_thread() -> None:
    assert int(probe("TUNED", code=HEAPS)[1]) > 2


def test_a_count_of_heaps_set_by_hand_is_left_alone() -> None:
    tuned, heaps = probe("GATEWAY_TUNED", code=HEAPS, MALLOC_ARENA_MAX="5")
    assert tuned == "False"
    assert int(heaps) == 5


def test_the_thresholds_are_still_set_beside_a_count_of_heaps_set_by_hand() -> None:
    assert probe(MALLOC_ARENA_MAX="1") == ["True", "False"]
