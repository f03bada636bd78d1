"""Balance: power-of-two choices over admitted endpoints, fewest outstanding wins."""

from __future__ import annotations

import random
from collections import Counter

import grpc
import pytest

from common.errors import TensorgateError
from gateway import balance
from tests.unit.fake_upstreams import endpoints


def test_two_endpoints_the_one_with_fewer_outstanding_always_wins() -> None:
    pool = endpoints(5, 0)
    rng = random.Random(1)
    assert all(balance.pick(pool, "m", rng=rng) is pool[1] for _ in range(200))


def test_the_busiest_of_three_is_never_chosen_and_the_others_are() -> None:
    pool = endpoints(0, 9, 3)
    rng = random.Random(2)
    seen = Counter(balance.pick(pool, "m", rng=rng).address for _ in range(600))
    assert pool[1].address not in seen
    assert seen[pool[0].address] > seen[pool[2].address] > 0


def test_every_endpoint_is_drawn_when_all_are_equal() -> None:
    pool = endpoints(0, 0, 0, 0)
    rng = random.Random(3)
    seen = {balance.pick(pool, "m", rng=rng).address for _ in range(400)}
    assert seen == {e.address for e in pool}


def test_ejected_endpoints_are_skipped_even_when_idle() -> None:
    pool = endpoints(0, 7, 0, 4)
    pool[0].admitted = pool[2].admitted = False
    rng = random.Random(4)
    seen = Counter(balance.pick(pool, "m", rng=rng).address for _ in range(400))
    assert set(seen) == {pool[3].address}  # 7 outstanding loses to 4 every time


def test_a_single_admitted_endpoint_is_chosen_among_ejected_ones() -> None:
    pool = endpoints(0, 0, 0)
    pool[0].admitted = pool[1].admitted = False
    assert all(balance.pick(pool, "m") is pool[2] for _ in range(100))


def test_exclude_is_never_chosen() -> None:
    pool = endpoints(0, 5, 6)
    rng = random.Random(5)
    assert all(balance.pick(pool, "m", exclude=pool[0], rng=rng) is not pool[0]
               for _ in range(300))


def test_all_ejected_names_the_model_and_the_count() -> None:
    pool = endpoints(0, 0)
    for endpoint in pool:
        endpoint.admitted = False
    with pytest.raises(TensorgateError) as caught:
        balance.pick(pool, "m")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.message == "model 'm': no healthy runtime worker (2 ejected)"


def test_an_empty_pool_is_unavailable() -> None:
    with pytest.raises(TensorgateError) as caught:
        balance.pick([], "m")
    assert caught.value.message == "model 'm': no runtime worker is available"


def test_only_the_excluded_one_left_is_unavailable() -> None:
    pool = endpoints(0)
    with pytest.raises(TensorgateError) as caught:
        balance.pick(pool, "m", exclude=pool[0])
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
