"""The quota stage: token buckets, in-flight caps, the shared table and its slots, two processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.errors import TensorgateError
from common.policy import Principal
from gateway import quota
from gateway.quota import FREE, QuotaExceeded, Quotas, Ticket


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(name: str = "ci", rate: float = 0.0, burst: int = 0, concurrency: int = 0) -> Principal:
    return Principal(f"key:{name}", "infer", ("*",), rate, burst, concurrency)


def admitted(quotas: Quotas, principal: Principal, n: int) -> int:
    """How many of n admissions pass (tickets kept, never released)."""
    passed = 0
    for _ in range(n):
        try:
            quotas.admit(principal)
        except QuotaExceeded:
            continue
        passed += 1
    return passed


def over(quotas: Quotas, principal: Principal) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit(principal)
    return info.value


@pytest.fixture(params=["anonymous", "file"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Quotas over an anonymous mapping, and over a file: the same rules either way."""
    made: list[Quotas] = []

    def build(clock: Clock, slots: int = 64) -> Quotas:
        path = tmp_path / "quota.bin" if request.param == "file" else None
        made.append(Quotas(path, slots=slots, clock=clock))
        return made[-1]

    yield build
    for quotas in made:
        quotas.close()


# --- the token bucket -------------------------------------------------------------------------


def test_exactly_burst_pass_at_once_then_retry_after_one_over_rate(make: Any) -> None:
    clock = Clock()
    quotas = make(clock)
    ci = key(rate=10.0, burst=5)
    assert admitted(quotas, ci, 5) == 5
    error = over(quotas, ci)
    assert isinstance(error, TensorgateError)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.http_status == 429
    assert error.limit == "rate"
    assert error.retry_after == pytest.approx(0.1)
    assert error.message == "key 'ci' is over its rate of 10 requests/s; retry after 0.1 s"


def test_refill_with_time_and_never_above_burst(make: Any) -> None:
    clock = Clock()
    quotas = make(clock)
    ci = key(rate=10.0, burst=5)
    assert admitted(quotas, ci, 5) == 5
    clock.now += 0.25  # 2.5 tokens
    assert admitted(quotas, ci, 5) == 2
    assert over(quotas, ci).retry_after == pytest.approx(0.05)
    clock.now += 3600.0
    assert admitted(quotas, ci, 20) == 5  # an hour idle refills to the burst, no further


def test_burst_zero_means_ceil_of_rate_at_least_one(make: Any) -> None:
    quotas = make(Clock())
    assert admitted(quotas, key("a", rate=2.5), 10) == 3
    assert admitted(quotas, key("b", rate=0.2), 10) == 1
    assert over(quotas, key("b", rate=0.2)).retry_after == pytest.approx(5.0)


def test_clock_going_backwards_adds_no_tokens(make: Any) -> None:
    clock = Clock()
    quotas = make(clock)
    ci = key(rate=1.0, burst=1)
    assert admitted(quotas, ci, 1) == 1
    clock.now -= 50.0
    assert admitted(quotas, ci, 3) == 0


def test_subjects_have_their_own_buckets(make: Any) -> None:
    quotas = make(Clock())
    assert admitted(quotas, key("a", rate=1.0, burst=2), 5) == 2
    assert admitted(quotas, key("b", rate=1.0, burst=3), 5) == 3


def test_unlimited_principal_is_free(make: Any) -> None:
    quotas = make(Clock(), slots=1)
    free = key("free")
    tickets = [quotas.admit(free) for _ in range(1000)]
    assert all(ticket is FREE for ticket in tickets)
    # It took no slot: the one slot is still there for a limited key.
    assert admitted(quotas, key("limited", rate=1.0, burst=1), 1) == 1


# --- concurrency ------------------------------------------------------------------------------


def test_concurrency_cap_and_release(make: Any) -> None:
    quotas = make(Clock())
    ci = key(concurrency=2)
    first, second = quotas.admit(ci), quotas.admit(ci)
    error = over(quotas, ci)
    assert error.limit == "concurrency" and error.retry_after == 1.0
    assert error.message == "key 'ci' has 2 requests in flight, its limit"
    quotas.release(first)
    third = quotas.admit(ci)
    assert isinstance(third, Ticket) and third is not FREE
    over(quotas, ci)
    quotas.release(second)
    quotas.release(third)
    assert admitted(quotas, ci, 5) == 2


def test_release_twice_frees_one_place_only(make: Any) -> None:
    quotas = make(Clock())
    ci = key(concurrency=2)
    ticket = quotas.admit(ci)
    quotas.admit(ci)
    quotas.release(ticket)
    quotas.release(ticket)
    assert admitted(quotas, ci, 5) == 1


def test_rate_only_tickets_hold_nothing(make: Any) -> None:
    quotas = make(Clock())
    ticket = quotas.admit(key(rate=5.0))
    assert ticket is FREE
    quotas.release(ticket)  # a no-op, and safe


def test_refused_by_concurrency_takes_no_token(make: Any) -> None:
    clock = Clock()
    quotas = make(clock)
    ci = key(rate=1.0, burst=3, concurrency=1)
    held = quotas.admit(ci)  # token 1 of 3
    for _ in range(10):
        assert over(quotas, ci).limit == "concurrency"
    quotas.release(held)
    ticket = quotas.admit(ci)  # token 2
    quotas.release(ticket)
    ticket = quotas.admit(ci)  # token 3
    quotas.release(ticket)
    assert over(quotas, ci).limit == "rate"


def test_refused_by_rate_holds_no_place(make: Any) -> None:
    clock = Clock()
    quotas = make(clock)
    ci = key(rate=1.0, burst=1, concurrency=2)
    held = quotas.admit(ci)
    for _ in range(10):
        assert over(quotas, ci).limit == "rate"
    clock.now += 1.0
    second = quotas.admit(ci)  # a place was still free: the refusals held none
    assert second is not FREE
    clock.now += 1.0
    assert over(quotas, ci).limit == "concurrency"
    quotas.release(held)
    quotas.release(second)


def test_jwt_subject_in_messages(make: Any) -> None:
    quotas = make(Clock())
    alice = Principal("jwt:alice", rate=1.0, burst=1)
    quotas.admit(alice)
    assert over(quotas, alice).message.startswith("token subject 'alice' is over its rate")


# --- slots ------------------------------------------------------------------------------------


def _home(subject: str, slots: int) -> int:
    digest = hashlib.blake2b(subject.encode(), digest_size=16).digest()
    return int.from_bytes(digest[8:], "little") % slots


def _colliding(slots: int) -> tuple[str, str]:
    names = [f"k{i}" for i in range(200)]
    first = names[0]
    second = next(n for n in names[1:] if _home(f"key:{n}", slots) == _home(f"key:{first}", slots))
    return first, second


def test_colliding_subjects_get_their_own_slots(make: Any) -> None:
    a, b = _colliding(8)
    quotas = make(Clock(), slots=8)
    assert admitted(quotas, key(a, rate=1.0, burst=2), 5) == 2
    assert admitted(quotas, key(b, rate=1.0, burst=3), 5) == 3
    assert admitted(quotas, key(a, rate=1.0, burst=2), 5) == 0


def test_full_table_refuses_rather_than_sharing(make: Any) -> None:
    clock = Clock()
    quotas = make(clock, slots=1)
    a = key("a", rate=1.0, burst=2)
    b = key("b", rate=1.0, burst=2)
    quotas.admit(a)
    error = over(quotas, b)
    assert error.limit == "table" and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quota table is full (1 callers)" in error.message and "key 'b'" in error.message
    assert admitted(quotas, a, 5) == 1  # a's bucket untouched by b's attempt


def test_idle_slot_is_taken_over_when_its_bucket_is_full_again(make: Any) -> None:
    clock = Clock()
    quotas = make(clock, slots=1)
    a = key("a", rate=1.0, burst=2)
    b = key("b", rate=1.0, burst=2)
    quotas.admit(a)  # at 1000: a's bucket is full again at 1001
    clock.now = 1000.99
    assert over(quotas, b).limit == "table"
    clock.now = 1001.0  # a's bucket is full: its state is as good as a new slot's
    assert admitted(quotas, b, 5) == 2
    assert over(quotas, a).limit == "table"  # b holds the slot now


def test_slot_with_requests_in_flight_is_never_taken_over(make: Any) -> None:
    clock = Clock()
    quotas = make(clock, slots=1)
    a = key("a", concurrency=1)
    ticket = quotas.admit(a)
    clock.now += 1e6
    assert over(quotas, key("b", concurrency=1)).limit == "table"
    assert over(quotas, a).limit == "concurrency"
    quotas.release(ticket)
    assert quotas.admit(key("b", concurrency=1)) is not FREE


# --- the shared file --------------------------------------------------------------------------


def test_two_tables_on_one_file_share_the_limits(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "quota.bin"
    one, two = Quotas(path, 16, clock), Quotas(path, 16, clock)
    ci = key(rate=1.0, burst=4, concurrency=3)
    tickets = [one.admit(ci), two.admit(ci), one.admit(ci)]
    assert over(two, ci).limit == "concurrency"
    one.release(tickets[1])  # released by the other process: still the same count
    tickets[1] = two.admit(ci)
    assert over(one, ci).limit == "concurrency"
    for ticket in tickets:
        two.release(ticket)
    assert over(two, ci).limit == "rate"  # four tokens spent between them
    clock.now += 1.0
    assert admitted(one, ci, 1) == 1
    assert over(two, ci).limit == "rate"
    one.close()
    two.close()


def test_reopened_file_keeps_its_counts(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "quota.bin"
    first = Quotas(path, 16, clock)
    assert admitted(first, key(rate=1.0, burst=3), 2) == 2
    first.close()
    again = Quotas(path, 16, clock)
    assert admitted(again, key(rate=1.0, burst=3), 5) == 1
    again.close()


def test_file_from_an_earlier_boot_is_reset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    clock = Clock()
    path = tmp_path / "quota.bin"
    monkeypatch.setattr(quota, "_boot_id", lambda: b"A" * 16)
    first = Quotas(path, 16, clock)
    assert admitted(first, key(rate=1.0, burst=3), 5) == 3
    first.close()
    monkeypatch.setattr(quota, "_boot_id", lambda: b"B" * 16)
    after_reboot = Quotas(path, 16, clock)
    assert admitted(after_reboot, key(rate=1.0, burst=3), 5) == 3
    after_reboot.close()


def test_a_file_of_another_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "quota.bin"
    Quotas(path, 16).close()
    with pytest.raises(ValueError, match="not a quota table of 32 slots"):
        Quotas(path, 32)
    other = tmp_path / "other.bin"
    other.write_bytes(b"something else entirely" * 100)
    with pytest.raises(ValueError, match="not a quota table"):
        Quotas(other, 16)


# --- a real second process --------------------------------------------------------------------

SHARED = key("shared", rate=0.001, burst=50)
WINDOW = key("window", rate=40.0, burst=5)


def _hammer(path: str, principal: Principal, ready: Any, start: Any, seconds: float,
            results: Any) -> None:
    """Runs in a spawned process: admit as fast as possible for `seconds`, report the count."""
    quotas = Quotas(Path(path), slots=64)
    ready.put(True)
    start.wait(30)
    passed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            quotas.admit(principal)
            passed += 1
        except QuotaExceeded:
            pass
    results.put(passed)


def _race(path: Path, principal: Principal, seconds: float) -> tuple[int, float]:
    """Two spawned processes and this one hammer one key; the total admitted and the span."""
    context = multiprocessing.get_context("spawn")
    ready, results, start = context.Queue(), context.Queue(), context.Event()
    mine = Quotas(path, slots=64)
    workers = [context.Process(target=_hammer,
                               args=(str(path), principal, ready, start, seconds, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=60)
    began = time.monotonic()
    start.set()
    total = 0
    end = began + seconds
    while time.monotonic() < end:
        total += admitted(mine, principal, 1)
    total += sum(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    mine.close()
    return total, time.monotonic() - began


def test_processes_share_one_burst_exactly(tmp_path: Path) -> None:
    total, _ = _race(tmp_path / "quota.bin", SHARED, 0.5)
    # A lost update between processes would let more than the burst through.
    assert total == 50


def test_processes_share_one_rate(tmp_path: Path) -> None:
    total, span = _race(tmp_path / "quota.bin", WINDOW, 0.5)
    assert WINDOW.burst < total <= WINDOW.burst + WINDOW.rate * span + 1
