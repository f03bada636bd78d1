"""The locust users' virtual environment: `.venv-locust`, built from requirements.txt on first use.

locust and tritonclient[http] cannot share one environment (their geventhttpclient ranges do not
meet), so the load generator gets its own, kept apart from the server's.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
DEFAULT = ROOT / ".venv-locust"


def python(where: Path = DEFAULT) -> Path:
    """The environment's interpreter, after installing the requirements if they changed."""
    interpreter = where / "bin" / "python"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = where / ".requirements.sha256"
    if interpreter.exists() and stamp.exists() and stamp.read_text() == digest:
        return interpreter
    if not interpreter.exists():
        venv.EnvBuilder(with_pip=True).create(where)
    print(f"installing locust into {where} (once)", file=sys.stderr, flush=True)
    subprocess.run([str(interpreter), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                   check=True)
    stamp.write_text(digest)
    return interpreter
