"""Run one tensorgate role with its garbage collections counted and timed:

    python -m loadtest.gcwatch [--young N] -- gateway --runtime unix:/tmp/lane.sock ...

On SIGUSR1, and when the role exits, one line goes to stderr: per generation, the collections so
far and the seconds they held the process. ``--young N`` replaces common/gc_tuning.py's
young-generation threshold (Python's own is 700), to compare settings under the same load.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import time
from typing import Any

from common import gc_tuning

#: Per generation: [collections, seconds].
Tally = dict[int, list[float]]


def watch() -> Tally:
    """Count every collection from now on."""
    tally: Tally = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
    started = [0.0]

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        entry = tally[info["generation"]]
        entry[0] += 1
        entry[1] += time.perf_counter() - started[0]

    gc.callbacks.append(on_collection)
    return tally


def line(tally: Tally) -> str:
    """``gc: young 12 in 0.004 s, middle 1 in 0.001 s, full 0 in 0.000 s (thresholds ...)``"""
    parts = [f"{name} {int(count)} in {seconds:.3f} s" for name, (count, seconds)
             in zip(("young", "middle", "full"), tally.values())]
    return f"gc: {', '.join(parts)} (thresholds {gc.get_threshold()})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--young", type=int, default=gc_tuning.YOUNG_THRESHOLD,
                        help="the young generation's threshold (%(default)s; Python's is 700)")
    parser.add_argument("role", nargs=argparse.REMAINDER,
                        help="the tensorgate command line after --")
    args = parser.parse_args()
    gc_tuning.YOUNG_THRESHOLD = args.young
    tally = watch()
    signal.signal(signal.SIGUSR1, lambda *_: print(line(tally), file=sys.stderr, flush=True))
    from tensorgate.cli import main as tensorgate

    try:
        return tensorgate([word for word in args.role if word != "--"])
    finally:
        print(line(tally), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
