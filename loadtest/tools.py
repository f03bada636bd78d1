"""The load generators the benchmarks drive (h2load, wrk) and the Debian packages that hold them:
installed with apt-get when this process is root and apt works, else a message naming both."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

PACKAGES = {"h2load": "nghttp2-client", "wrk": "wrk"}
APT_TIMEOUT_S = 600.0


class MissingTool(RuntimeError):
    """A load generator is not installed and could not be."""


def hint(tool: str) -> str:
    """What a caller without ``tool`` is told: the package and the command that installs it."""
    return f"needs {tool} (apt-get install {PACKAGES[tool]})"


def missing(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def _apt(*args: str) -> bool:
    try:
        done = subprocess.run(["apt-get", *args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=APT_TIMEOUT_S, check=False,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def ensure(*tools: str) -> None:
    """Install whichever of ``tools`` is missing, or raise MissingTool saying how to."""
    lacking = missing(*tools)
    if not lacking:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        packages = sorted({PACKAGES[tool] for tool in lacking})
        print(f"installing {' '.join(packages)} with apt-get", flush=True)
        install = ("install", "-y", "--no-install-recommends", *packages)
        # The package lists may be empty or stale on a fresh machine: update once, retry.
        if not _apt(*install) and _apt("update"):
            _apt(*install)
        lacking = missing(*tools)
    if lacking:
        where = "" if os.geteuid() == 0 else " as root"
        raise MissingTool("; ".join(hint(tool) for tool in lacking) +
                          f": install it{where} and run again")


def main(argv: list[str]) -> int:
    """``python -m loadtest.tools h2load wrk``: install what is missing, or say how to."""
    try:
        ensure(*(argv or sorted(PACKAGES)))
    except MissingTool as exc:
        print(f"skipping the tests that drive them: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"unknown tool {exc}: expected one of {', '.join(sorted(PACKAGES))}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
