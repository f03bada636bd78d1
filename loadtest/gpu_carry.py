"""What travels to a GPU machine that cannot reach a package registry (``loadtest/.gpu-carry``,
ignored by git): Python 3.12 wheels of what its image lacks, at this environment's versions,
perf_analyzer's wheel, and h2load and wrk with the libraries they need; and installing them
there."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / "loadtest" / ".gpu-carry"
#: Distributions the serving path and its tests import that the machine's image lacks or may
#: hold at another release (gRPC and protobuf must match the generated code).
WHEELS = ("fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types",
          "annotated-doc", "typing-inspection", "typing-extensions", "anyio", "uvicorn", "h11",
          "httptools", "orjson", "pyjwt", "cryptography", "cffi", "pycparser",
          "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-semantic-conventions",
          "grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "tritonclient",
          "python-rapidjson", "gevent", "greenlet", "zope-event", "zope-interface", "brotli",
          "certifi", "six", "pytest-asyncio")
#: Pinned by tritonclient at a release with no Python 3.12 wheel: built here with a CPython 3.12
#: (its C extension links only the C library).
BUILT = ("geventhttpclient",)
PERF_ANALYZER = "perf-analyzer==2.60.0"
#: The machine runs CPython 3.12 on glibc 2.39: any of these manylinux tags loads there.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)] + [
    "manylinux2014_x86_64", "manylinux1_x86_64"]
#: Libraries of h2load and wrk left behind: the C runtime, and those every image has (newer).
SYSTEM_LIBS = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "ld-linux",
               "linux-vdso", "libstdc++.so", "libgcc_s.so", "libssl.so", "libcrypto.so",
               "libz.so")
TOOLS = ("h2load", "wrk")
#: What one call to the machine may carry, with the working tree (64 MiB), less a margin.
LIMIT_MIB = 56
WRAPPER = """#!/bin/sh
d="$(dirname "$0")/.."
LD_LIBRARY_PATH="$d/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" exec "$d/libexec/{tool}" "$@"
"""

Log = Callable[[str], None]


def pinned(names: tuple[str, ...] = WHEELS) -> list[str]:
    """NAME==VERSION of each of ``names`` as installed here."""
    return [f"{name}=={metadata.version(name)}" for name in names]


def build(folder: Path, requirements: list[str]) -> None:
    """Wheels for CPython 3.12 built from source, with a python3.12 found here."""
    candidates = [*map(str, sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python"))),
                  shutil.which("python3.12") or ""]
    found = next((c for c in candidates if c and subprocess.run(
        [c, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"], capture_output=True,
        timeout=60, check=False).returncode == 0), None)
    if found is None:
        raise SystemExit(f"building {', '.join(requirements)} needs a python3.12 here")
    subprocess.run([found, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder),
                    *requirements], check=True, timeout=900)


def download(folder: Path, requirements: list[str]) -> None:
    argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for platform in [*PLATFORMS, "manylinux_2_38_x86_64"]:
        argv += ["--platform", platform]
    subprocess.run([*argv, *requirements], check=True, timeout=900)


def libraries(binary: str) -> list[Path]:
    """The shared libraries ``binary`` loads that the machine may not have."""
    found = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = [line.split("=>")[1].split("(")[0].strip() for line in found.splitlines()
             if "=>" in line]
    return [Path(p) for p in paths if p and not any(s in Path(p).name for s in SYSTEM_LIBS)]


def copy_tools(folder: Path) -> None:
    """h2load and wrk, their libraries, and a wrapper each that points the loader at them."""
    for sub in ("bin", "libexec", "lib"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is None:
            raise SystemExit(f"{tool} is not installed here (python -m loadtest.tools {tool})")
        shutil.copy2(found, folder / "libexec" / tool)
        for library in libraries(found):
            shutil.copy2(library.resolve(), folder / "lib" / library.name)
        wrapper = folder / "bin" / tool
        wrapper.write_text(WRAPPER.format(tool=tool))
        wrapper.chmod(0o755)


def size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def fresh_folder(carry: Path) -> None:
    """An empty ``carry`` that git ignores, itself included: what travels never commits."""
    shutil.rmtree(carry, ignore_errors=True)
    carry.mkdir(parents=True)
    (carry / ".gitignore").write_text("*\n")


def prepare(carry: Path = CARRY) -> int:
    """Fill ``carry`` afresh; exit status 1 when it is too large to travel."""
    fresh_folder(carry)
    download(carry / "wheels", pinned())
    # Apart: pip would refuse the whole install where glibc is older than its wheel's 2.38.
    download(carry / "tools", [PERF_ANALYZER])
    build(carry / "wheels", pinned(BUILT))
    copy_tools(carry / "tools")
    total = size_mib(carry)
    print(f"{carry}: {total:.1f} MiB (at most {LIMIT_MIB} travel with the working tree)")
    for path in sorted(carry.rglob("*"), key=lambda p: -p.stat().st_size)[:5]:
        print(f"  {path.stat().st_size / 2**20:6.1f} MiB  {path.relative_to(carry)}")
    return 0 if total <= LIMIT_MIB else 1


def install(carry: Path, site: Path, env: dict[str, str], log: Log, dry_run: bool = False
            ) -> dict[str, str]:
    """Install what travelled into ``site``; ``env`` with PYTHONPATH, PATH and PERF_ANALYZER
    pointing at it. Without a carry folder, the machine's own packages and tools."""
    env = dict(env)
    env["PYTHONPATH"] = str(ROOT)
    wheels = sorted((carry / "wheels").glob("*.whl"))
    if not wheels:
        log(f"nothing carried in {carry}: the machine's own packages and tools")
        return env
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
            "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
            *map(str, wheels)]
    log(f"install {len(wheels)} wheels into {site}")
    if not dry_run:
        subprocess.run(argv, check=True, timeout=300)
    env["PYTHONPATH"] = f"{site}:{ROOT}"
    tools = carry / "tools" / "bin"
    if tools.is_dir() and any(shutil.which(tool) is None for tool in TOOLS):
        env["PATH"] = f"{tools}:{env.get('PATH', '')}"
        log(f"h2load and wrk from {tools}")
    tool = site / "perf_analyzer" / "bin" / "perf_analyzer"
    if not dry_run:
        unpack_perf_analyzer(carry / "tools", site)
    if not env.get("PERF_ANALYZER") and (dry_run or loads(tool, log)):
        env["PERF_ANALYZER"] = str(tool)
        log(f"perf_analyzer: {tool}")
    return env


def unpack_perf_analyzer(folder: Path, site: Path) -> None:
    """The perf_analyzer binary out of its carried wheel, into ``site/perf_analyzer/bin``."""
    for wheel in folder.glob("perf_analyzer-*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            archive.extract("perf_analyzer/bin/perf_analyzer", site)


def loads(tool: Path, log: Log) -> bool:
    """Whether the carried perf_analyzer starts here (it needs glibc 2.38 or later)."""
    if not tool.exists():
        log("no perf_analyzer carried: the shared-memory rows will say so")
        return False
    tool.chmod(0o755)
    # No server listens on port 9: a binary that starts answers with a connection error.
    done = subprocess.run([str(tool), "-m", "none", "-u", "127.0.0.1:9"], capture_output=True,
                          text=True, timeout=60, check=False)
    said = done.stdout + done.stderr
    if "GLIBC" in said or "error while loading" in said:
        log(f"the carried perf_analyzer does not start here: {said.strip()[-300:]}")
        return False
    return True
