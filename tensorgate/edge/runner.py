"""Run an edge bundle with onnxruntime and numpy alone: checksums, signature, inference, timing.

Copied into every bundle as `run.py`: it imports nothing from tensorgate, so a bare Python runs it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
# The DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow it.
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")


class BundleError(Exception):
    """A bundle that cannot be trusted or run; the message says what is wrong and what is wanted."""


@dataclass
class Bundle:
    """A bundle read into memory and checked: the bytes that were hashed are the bytes that run."""

    source: Path
    files: dict[str, bytes]
    manifest: dict[str, Any]
    signature_checked: bool

    @property
    def model_bytes(self) -> bytes:
        return self.files[self.manifest["model_file"]]


# -- Ed25519 verification (RFC 8032 §5.1.7), in pure Python so devices need no crypto library ----

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
Point = tuple[int, int, int, int]


def _add(p: Point, q: Point) -> Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _multiply(scalar: int, point: Point) -> Point:
    result: Point = (0, 1, 1, 0)
    while scalar > 0:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _decompress(data: bytes) -> Point | None:
    # RFC 8032 §5.1.3: y >= p and "x = 0 with the sign bit set" are refused, so each point has one
    # encoding and a signature cannot be re-encoded into a second valid one.
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else (0, y, 1, 0)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y, 1, x * y % _P


_BASE = _decompress((4 * pow(5, _P - 2, _P) % _P).to_bytes(32, "little"))


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    if len(public_key) != 32 or len(signature) != 64 or _BASE is None:
        return False
    a, r = _decompress(public_key), _decompress(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    # S < L (§5.1.7): S + L would satisfy the same equation, a second signature of one message.
    if a is None or r is None or s >= _L:
        return False
    digest = hashlib.sha512(signature[:32] + public_key + message).digest()
    h = int.from_bytes(digest, "little") % _L
    left, right = _multiply(s, _BASE), _add(r, _multiply(h, a))
    return (left[0] * right[2] - right[0] * left[2]) % _P == 0 and \
        (left[1] * right[2] - right[1] * left[2]) % _P == 0


def read_public_key(path: Path) -> bytes:
    """The 32 raw bytes of an Ed25519 public key in PEM (SubjectPublicKeyInfo)."""
    try:
        lines = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read the public key {path}: {exc}") from None
    body = "".join(line for line in lines if not line.startswith("-----"))
    try:
        der = base64.b64decode(body, validate=True)
    except ValueError:
        der = b""
    if len(der) != 44 or not der.startswith(_ED25519_SPKI):
        raise BundleError(f"{path}: expected an Ed25519 public key in PEM "
                          "('-----BEGIN PUBLIC KEY-----'), as `openssl pkey -pubout` writes it")
    return der[len(_ED25519_SPKI):]


# -- reading and checking a bundle ----------------------------------------------------------------

def _read_files(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle (expected a directory or a .tar.gz)")
    try:
        with tarfile.open(path, "r:gz") as archive:
            # NOTE: read members into memory, never extract: names from an archive are untrusted.
            members = [m for m in archive.getmembers() if m.isfile()]
            files: dict[str, bytes] = {}
            for member in members:
                handle = archive.extractfile(member)
                if handle is not None:
                    files[Path(member.name).name] = handle.read()
            return files
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{path}: not a readable .tar.gz bundle: {exc}") from None


def _check_signature(files: dict[str, bytes], public_key: Path | None, where: Path) -> bool:
    if public_key is None:
        if SIGNATURE in files:
            print(f"note: {where} is signed; pass --public-key to check the signature",
                  file=sys.stderr)
        return False
    if SIGNATURE not in files:
        raise BundleError(f"{where}: the bundle has no signature ({SIGNATURE}) but --public-key "
                          "was given; refusing to run an unsigned bundle")
    try:
        signature = base64.b64decode(files[SIGNATURE].strip(), validate=True)
    except ValueError:
        signature = b""
    if not ed25519_verify(read_public_key(public_key), files[MANIFEST], signature):
        raise BundleError(f"{where}: the signature does not match manifest.json for the key "
                          f"{public_key}: the bundle was changed or signed by another key")
    return True


def open_bundle(path: Path, public_key: Path | None = None) -> Bundle:
    """Read a bundle and check its signature (when a key is given) and every file's sha256."""
    files = _read_files(path)
    if MANIFEST not in files:
        raise BundleError(f"{path}: no {MANIFEST} (expected a bundle from `tensorgate edge "
                          "export`)")
    checked = _check_signature(files, public_key, path)
    try:
        manifest = json.loads(files[MANIFEST])
        listed = manifest["files"]
        model_file = manifest["model_file"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: {MANIFEST} is not a valid manifest: {exc!r}") from None
    for name, entry in sorted(listed.items()):
        if name not in files:
            raise BundleError(f"{path}: file {name!r} listed in the manifest is missing")
        actual = hashlib.sha256(files[name]).hexdigest()
        if actual != entry.get("sha256"):
            raise BundleError(f"{path}: checksum mismatch for {name!r}: the manifest says "
                              f"sha256 {entry.get('sha256')}, the file has {actual}")
    if model_file not in listed:
        raise BundleError(f"{path}: the model file {model_file!r} has no checksum in the manifest")
    return Bundle(path, {n: files[n] for n in listed}, manifest, checked)


def load_session(model: bytes, ort_format: bool, threads: int = 0,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> ort.InferenceSession:
    """An onnxruntime session over model bytes, ONNX or ORT format; export verifies with it too."""
    # NOTE: imported here, not at the top: `tensorgate`'s command line imports this module to
    # build its parser, and a gateway process must not carry onnxruntime for that.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)
    if ort_format:
        options.add_session_config_entry("session.load_model_format", "ORT")
    return ort.InferenceSession(model, options, providers=list(providers))


def session(bundle: Bundle, threads: int = 0) -> ort.InferenceSession:
    """A session over the bundle's checked model bytes."""
    model_file = bundle.manifest["model_file"]
    try:
        return load_session(bundle.model_bytes, model_file.endswith(".ort"), threads)
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        import onnxruntime as ort

        raise BundleError(f"{bundle.source}: onnxruntime {ort.__version__} cannot load "
                          f"{model_file}: {exc}") from None


# -- inputs, outputs and the two commands ------------------------------------------------------

def _named_arrays(path: Path, names: list[str]) -> dict[str, Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            if len(names) != 1:
                raise BundleError(f"{path}: the model has inputs {names}; give a .npz or .json "
                                  "mapping each name to its array")
            return {names[0]: np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        if suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise BundleError(f"{path}: expected a .npy, .npz or .json input file")
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read the input file {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("inputs"), list):  # an OIP request body
        try:
            return {str(item["name"]): np.reshape(item["data"], item.get("shape", [-1]))
                    for item in data["inputs"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{path}: an OIP request needs inputs with name, shape and data: "
                              f"{exc!r}") from None
    if isinstance(data, list) and len(names) == 1:
        return {names[0]: data}
    if isinstance(data, dict):
        return data
    raise BundleError(f"{path}: expected a JSON list, an object mapping input names to arrays, "
                      "or an OIP request body {\"inputs\": [...]}")


def _fits(shape: tuple[int, ...], spec: list[int]) -> bool:
    return len(shape) == len(spec) and all(d == s or s < 0 for d, s in zip(shape, spec))


def load_inputs(path: Path, inputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The feeds for the model, each cast to its datatype, a batch axis added when missing."""
    names = [spec["name"] for spec in inputs]
    given = _named_arrays(path, names)
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec["name"] not in given:
            raise BundleError(f"{path}: no input {spec['name']!r}; the model takes {names}, "
                              f"the file has {sorted(map(str, given))}")
        try:
            array = np.asarray(given[spec["name"]], dtype=DTYPES[spec["datatype"]])
        except (ValueError, TypeError, KeyError) as exc:
            raise BundleError(f"input {spec['name']!r}: cannot convert to "
                              f"{spec['datatype']}: {exc}") from None
        shape = list(spec["shape"])
        if not _fits(array.shape, shape) and _fits((1, *array.shape), shape):
            array = array[np.newaxis]
        if not _fits(array.shape, shape):
            raise BundleError(f"input {spec['name']!r}: expected shape {shape}, "
                              f"got {list(array.shape)}")
        feeds[spec["name"]] = array
    return feeds


def infer(bundle: Bundle, feeds: dict[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
    """Run the bundle once; outputs by name, in the manifest's order."""
    names = [spec["name"] for spec in bundle.manifest["outputs"]]
    results = session(bundle, threads).run(names, feeds)
    return dict(zip(names, (np.asarray(r) for r in results)))


def write_outputs(outputs: dict[str, np.ndarray], path: Path | None) -> None:
    """To a .npy (the first output), .npz or .json file; to stdout as JSON without a path."""
    as_json = {name: value.tolist() for name, value in outputs.items()}
    if path is None:
        print(json.dumps(as_json))
    elif path.suffix.lower() == ".npy":
        np.save(path, next(iter(outputs.values())))
    elif path.suffix.lower() == ".npz":
        np.savez(path, **outputs)  # type: ignore[arg-type]
    else:
        path.write_text(json.dumps(as_json) + "\n")


def bench(bundle: Bundle, batch_sizes: tuple[int, ...], iterations: int,
          threads: int = 1) -> list[dict[str, float]]:
    """Latency percentiles and throughput per batch size, on inputs generated from the signature."""
    runner = session(bundle, threads)
    rng = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        feeds = {}
        for spec in bundle.manifest["inputs"]:
            shape = [batch if i == 0 and d < 0 else max(d, 1) for i, d in enumerate(spec["shape"])]
            feeds[spec["name"]] = rng.random(shape).astype(DTYPES[spec["datatype"]])
        runner.run(None, feeds)  # warm-up: the first run allocates
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            runner.run(None, feeds)
            times.append(time.perf_counter() - start)
        ms = np.array(times) * 1e3
        rows.append({"batch": batch, "p50_ms": float(np.percentile(ms, 50)),
                     "p90_ms": float(np.percentile(ms, 90)),
                     "per_second": batch * iterations / float(np.sum(times))})
    return rows


def describe(bundle: Bundle) -> str:
    """One line naming what the bundle is and how it was checked."""
    m = bundle.manifest
    signed = "signature verified" if bundle.signature_checked else "checksums verified"
    return (f"{m.get('name')}:{m.get('source', {}).get('version')} {m.get('target')} "
            f"({m['model_file']}), {signed}")


def add_arguments(run: argparse.ArgumentParser, timing: argparse.ArgumentParser,
                  bundle_default: Path | None) -> None:
    """The options of `run` and `bench`, shared by `tensorgate edge` and a bundle's run.py."""
    for parser in (run, timing):
        parser.add_argument("bundle", type=Path, nargs="?" if bundle_default else None,
                            default=bundle_default, help="the bundle: a directory or a .tar.gz")
        parser.add_argument("--public-key", type=Path, metavar="PEM",
                            help="check the bundle's Ed25519 signature with this public key")
        parser.add_argument("--threads", type=int, default=0 if parser is run else 1,
                            help="onnxruntime intra-op threads (0: onnxruntime's default)")
    run.add_argument("--input", type=Path, required=True, metavar="FILE",
                     help="the inputs: .npy (one input), .npz or .json")
    run.add_argument("--output", type=Path, metavar="FILE",
                     help="write the outputs to .npy, .npz or .json (default: JSON on stdout)")
    timing.add_argument("--batch", type=int, action="append", metavar="N",
                        help="a batch size to time; repeat for several (1 and 32)")
    timing.add_argument("--iterations", type=int, default=200, help="runs per batch size (200)")


def command(args: argparse.Namespace, which: str) -> int:
    """Run `run` or `bench`; a bundle that fails its checks prints why and returns 1."""
    try:
        bundle = open_bundle(args.bundle, args.public_key)
        print(describe(bundle), file=sys.stderr)
        if which == "run":
            feeds = load_inputs(args.input, bundle.manifest["inputs"])
            write_outputs(infer(bundle, feeds, args.threads), args.output)
            return 0
        sizes = tuple(args.batch or (1, 32))
        print(f"{'batch':>5}  {'p50 ms':>8}  {'p90 ms':>8}  {'samples/s':>10}")
        for row in bench(bundle, sizes, max(1, args.iterations), args.threads):
            print(f"{row['batch']:>5}  {row['p50_ms']:>8.3f}  {row['p90_ms']:>8.3f}  "
                  f"{row['per_second']:>10,.0f}")
        return 0
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """`python run.py run --input FILE` or `python run.py bench`, beside the bundle's files."""
    parser = argparse.ArgumentParser(description="Run or time this edge bundle (onnxruntime).")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the model on an input file")
    timing = commands.add_parser("bench", help="time the model on generated inputs")
    add_arguments(run, timing, Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    return command(args, args.command)


if __name__ == "__main__":
    raise SystemExit(main())
