"""What policy costs on the hot path: one gateway with auth off, one with an API key, a quota and
a 90/10 split, in front of one runtime worker; closed-loop gRPC runs (h2load) alternate.

    python -m loadtest.policy_bench [--duration 10] [--rounds 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import grpc

from common.proto import grpc_service_pb2 as pb
from common.registry import Registry
from common.settings import default_threads
from loadtest.cases import prepare_repo
from loadtest.inturn import Run, take_turns
from loadtest.loadgen import Load, Target, closed_loop
from loadtest.servers import LOGS, Children, start_gateway, start_runtime

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
PATHS = ("auth off, no policy", "API key + quota + 90/10 split")


def twin_repository(root: Path) -> Path:
    """digits with its ONNX version 1 also served as version 2: the split's two sides cost the
    same, so the comparison measures the policy stages and not two different models."""
    model = root / "digits"
    for version in ("1", "2"):
        (model / version).mkdir(parents=True)
        (model / version / "model.onnx").symlink_to(DIGITS / "1" / "model.onnx")
    (model / "config.yaml").write_text((DIGITS / "config.yaml").read_text())
    return root


def digits_body() -> bytes:
    """A digits request that names no version, so the split decides."""
    case = prepare_repo(("digits",))["digits"]
    request = pb.ModelInferRequest.FromString(case.grpc_body)
    request.ClearField("model_version")
    return request.SerializeToString()


def policy_registry(path: Path) -> str:
    """A key with a quota high enough never to refuse, and digits split 90/10; its secret."""
    with Registry(path) as registry:
        _, secret = registry.create_key("bench", "infer", ["digits"], rate=1e6, burst=1_000_000,
                                        concurrency=4096)
        registry.set_traffic("digits", {"1": 90, "2": 10})
    return secret


def answer_size(address: str, body: bytes, headers: tuple[tuple[str, str], ...]) -> int:
    """One real call, which must succeed; the size of its answer on the wire, so that h2load's
    byte count tells failed calls (HTTP 200 with an error in the trailers) from good ones."""
    with grpc.insecure_channel(address) as channel:
        answer = channel.unary_unary(METHOD)(body, metadata=headers, timeout=30)
    return len(answer) + 5


def measure(duration: float, warmup: float, rounds: int,
            concurrency: int) -> dict[str, list[float]]:
    """Requests/s of each path, per round: {path: [round 1, round 2, ...]}."""
    with tempfile.TemporaryDirectory(prefix="tg-policy-") as tmp:
        return run(argparse.Namespace(duration=duration, warmup=warmup, rounds=rounds,
                                      concurrency=concurrency), Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> dict[str, list[float]]:
    body = digits_body()
    secret = policy_registry(tmp / "bench.db")
    children = Children(LOGS)
    try:
        _, lane = start_runtime(children, "runtime", twin_repository(tmp / "repo"),
                                default_threads())
        plain, _ = start_gateway(children, [lane], ("--no-auth",), name="gateway-plain")
        policed, _ = start_gateway(children, [lane], ("--registry", str(tmp / "bench.db")),
                                   name="gateway-policy")
        key = (("authorization", f"Bearer {secret}"),)
        targets = {
            PATHS[0]: Target("grpc", plain, METHOD, body, answer_size=answer_size(plain, body, ())),
            PATHS[1]: Target("grpc", policed, METHOD, body, key,
                             answer_size=answer_size(policed, body, key)),
        }
        load = Load(args.concurrency, 8, args.warmup, args.duration)
        plan = [(path, _strict_run(path, target, load)) for path, target in targets.items()]
        return take_turns(plan, args.rounds).rates
    finally:
        children.close()


def _strict_run(path: str, target: Target, load: Load) -> Run:
    """A closed-loop run that raises on any error: policy must not fail a request here."""
    def run() -> tuple[float, float, float]:
        outcome = closed_loop(target, load, lambda: {})
        if outcome.errors:
            raise RuntimeError(f"{path}: {outcome.errors} errors: {outcome.first_error}")
        return outcome.rate, outcome.p("50"), outcome.p("99")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.policy_bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    rates = measure(args.duration, args.warmup, args.rounds, args.concurrency)
    medians = {path: statistics.median(values) for path, values in rates.items()}
    ratio = medians[PATHS[1]] / medians[PATHS[0]]
    print(f"digits over gRPC, c{args.concurrency}, median of {args.rounds} rounds: "
          f"{medians[PATHS[0]]:.0f} req/s without policy, {medians[PATHS[1]]:.0f} req/s with "
          f"(ratio {ratio:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
