"""Compile the .proto files in protos/ into the Python package `common.proto`.

Usage: ``python protos/generate.py [OUT_DIR]`` (what ``make proto`` runs); OUT_DIR defaults
to ``common/proto``. For every ``protos/NAME.proto`` it writes ``NAME_pb2.py`` and the type
stub ``NAME_pb2.pyi``, plus ``NAME_pb2_grpc.py`` when the file declares a service.

Two details of the output:

* protoc sees the sources under the virtual path ``common/proto`` (``-Icommon/proto=protos``),
  so the generated modules import each other as ``from common.proto import ...``.
* The generated ``*_pb2.py`` modules register their descriptors in ``common.proto.POOL``, a
  descriptor pool of their own, instead of protobuf's process-wide default pool. Our messages
  use Triton's package and message names (``inference.ModelInferRequest``, ...) because the
  gRPC method paths must match Triton's; in the default pool they would clash with
  tritonclient's generated modules ("duplicate symbol") whenever both are imported in one
  process, e.g. a pytest session that runs the runtime's unit tests and tritonclient-based
  tests together. The rewrite is checked: if protoc's output ever changes shape, this script
  fails instead of silently writing modules that use the default pool.

The output depends only on the .proto files and the installed grpcio-tools version, and
tests/unit/test_proto_fresh.py checks that the committed modules match it.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
PACKAGE = "common.proto"
VIRTUAL_DIR = PACKAGE.replace(".", "/")
DEFAULT_OUT_DIR = REPO_ROOT / VIRTUAL_DIR

# Names of the files this script writes; anything else in OUT_DIR is left alone.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

_SERVICE = re.compile(r"^\s*service\s+\w+", re.MULTILINE)
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = "DESCRIPTOR = _tensorgate_pool.AddSerializedFile("
_IMPORT_ANCHOR = "from google.protobuf.internal import builder as _builder\n"
_POOL_IMPORT = f"from {PACKAGE} import POOL as _tensorgate_pool\n"


def proto_sources() -> list[Path]:
    """The .proto files to compile, in a stable order."""
    return sorted(PROTO_DIR.glob("*.proto"))


def is_generated(path: Path) -> bool:
    """True for a file name this script produces."""
    return path.name.endswith(GENERATED_SUFFIXES)


def _run_protoc(proto: Path, out_dir: Path) -> None:
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{VIRTUAL_DIR}={PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
    ]
    if _SERVICE.search(proto.read_text(encoding="utf-8")):
        args.append(f"--grpc_python_out={out_dir}")
    args.append(f"{VIRTUAL_DIR}/{proto.name}")
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto} (command: {' '.join(args)})")


def _use_private_pool(module: Path) -> None:
    """Point a generated *_pb2.py at common.proto.POOL instead of the default pool."""
    text = module.read_text(encoding="utf-8")
    if text.count(_DEFAULT_POOL) != 1 or text.count(_IMPORT_ANCHOR) != 1:
        raise RuntimeError(
            f"{module.name}: unexpected protoc output, cannot redirect it to {PACKAGE}.POOL; "
            "update protos/generate.py for this protoc version"
        )
    text = text.replace(_IMPORT_ANCHOR, _IMPORT_ANCHOR + _POOL_IMPORT)
    module.write_text(text.replace(_DEFAULT_POOL, _PRIVATE_POOL), encoding="utf-8")


def generate(out_dir: Path) -> list[Path]:
    """Compile every protos/*.proto into out_dir and return the files written, sorted.

    Generated files in out_dir that no .proto produces any more are deleted; other files
    (``__init__.py``) are not touched.
    """
    sources = proto_sources()
    if not sources:
        raise RuntimeError(f"no .proto files in {PROTO_DIR}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tensorgate-proto-") as tmp:
        staging = Path(tmp)
        for proto in sources:
            _run_protoc(proto, staging)
        produced = sorted(p for p in (staging / VIRTUAL_DIR).iterdir() if is_generated(p))
        for module in produced:
            if module.name.endswith("_pb2.py"):
                _use_private_pool(module)
        written = []
        for module in produced:
            target = out_dir / module.name
            shutil.copyfile(module, target)
            written.append(target)
    names = {p.name for p in written}
    for stale in out_dir.iterdir():
        if is_generated(stale) and stale.name not in names:
            stale.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or any(a in ("-h", "--help") for a in args):
        print("usage: python protos/generate.py [OUT_DIR]", file=sys.stderr)
        return 2
    out_dir = Path(args[0]) if args else DEFAULT_OUT_DIR
    for path in generate(out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
