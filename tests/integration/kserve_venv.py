"""The kserve SDK's virtual environment: `.venv-kserve`, built with `kserve==0.21.0` on first use.

The SDK pins a protobuf and grpcio-tools that conflict with ours, so its client runs apart, in its
own interpreter, and the tests talk to it through a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENT = "kserve==0.21.0"
DEFAULT = ROOT / ".venv-kserve"
#: Ceiling for the one-time install; CI builds it fresh each run.
INSTALL_TIMEOUT_S = 900


def python(where: Path = DEFAULT) -> Path:
    """The environment's interpreter, after installing the SDK if it is not there yet.

    Raises OSError or subprocess.SubprocessError when the environment cannot be built (no route
    to the package registry, for one).
    """
    interpreter = where / "bin" / "python"
    stamp = where / ".requirement"
    if interpreter.exists() and stamp.exists() and stamp.read_text() == REQUIREMENT:
        return interpreter
    if not interpreter.exists():
        venv.EnvBuilder(with_pip=True).create(where)
    print(f"installing {REQUIREMENT} into {where} (once)", file=sys.stderr, flush=True)
    subprocess.run([str(interpreter), "-m", "pip", "install", "-q", REQUIREMENT], check=True,
                   timeout=INSTALL_TIMEOUT_S)
    stamp.write_text(REQUIREMENT)
    return interpreter


if __name__ == "__main__":
    print(python())
