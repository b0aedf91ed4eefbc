"""The cascade's pure parts: circuit breaker, budget, server address; clocks are injected."""

from __future__ import annotations

import threading

import pytest

from edge_agent.offload.address import parse_target
from edge_agent.offload.breaker import BreakerState, CircuitBreaker
from edge_agent.offload.budget import Budget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_n_failures_in_a_row_only() -> None:
    clock, states = Clock(), list[str]()
    breaker = CircuitBreaker(3, 10.0, clock=clock, on_change=states.append)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    breaker.success()  # a success resets the run
    for _ in range(2):
        breaker.failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert states == ["open"]


def test_breaker_half_opens_after_the_cooldown_with_one_trial() -> None:
    clock, states = Clock(), list[str]()
    breaker = CircuitBreaker(1, 10.0, clock=clock, on_change=states.append)
    breaker.failure()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the trial
    assert not breaker.allow() and not breaker.allow()  # everyone else waits
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    assert states == ["open", "half_open", "closed"]


def test_a_failed_trial_opens_again_for_a_full_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(2, 5.0, clock=clock)
    breaker.failure()
    breaker.failure()
    clock.now += 5.0
    assert breaker.allow()
    breaker.failure()  # one failure is enough while half-open
    assert breaker.state is BreakerState.OPEN
    clock.now += 4.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_a_released_or_lost_trial_does_not_wedge_the_breaker() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.failure()
    clock.now += 5.0
    assert breaker.allow()
    breaker.release()  # not tried after all (say, over budget)
    assert breaker.allow()  # another caller gets the trial
    clock.now += 5.0  # that caller never reports
    assert breaker.allow()


def test_breaker_is_thread_safe_one_trial_among_many_threads() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    granted: list[bool] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        granted.append(breaker.allow())

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == 1


@pytest.mark.parametrize(
    ("failures", "cooldown"), [(0, 1.0), (1, 0.0), (1, -1.0)], ids=["failures", "zero", "neg"]
)
def test_breaker_refuses_bad_settings(failures: int, cooldown: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failures, cooldown)


def test_budget_per_second_is_a_token_bucket() -> None:
    clock = Clock()
    budget = Budget(max_per_second=2.0, clock=clock)
    assert [budget.take(100) for _ in range(3)] == [True, True, False]  # burst of 2
    clock.now += 0.5
    assert [budget.take(100) for _ in range(2)] == [True, False]
    clock.now += 10.0  # refills to the burst, no more
    assert [budget.take(100) for _ in range(3)] == [True, True, False]


def test_budget_below_one_per_second_still_allows_one() -> None:
    clock = Clock()
    budget = Budget(max_per_second=0.5, clock=clock)
    assert budget.take(1) and not budget.take(1)
    clock.now += 1.9
    assert not budget.take(1)
    clock.now += 0.1
    assert budget.take(1)


def test_budget_bytes_per_minute_refills_over_a_minute() -> None:
    clock = Clock()
    budget = Budget(max_bytes_per_minute=600, clock=clock)
    assert budget.take(256) and budget.take(256) and not budget.take(256)
    assert budget.take(88)  # what is left
    clock.now += 30.0  # half a minute: 300 bytes back
    assert budget.take(256) and not budget.take(256)
    assert not budget.take(601)  # bigger than a minute's worth: never


def test_budget_pays_only_when_both_limits_allow() -> None:
    clock = Clock()
    budget = Budget(max_per_second=1.0, max_bytes_per_minute=100, clock=clock)
    assert not budget.take(200)  # over the bytes: the call token is not spent
    assert budget.take(50)
    assert not budget.take(10)  # no call token left
    clock.now += 1.0
    assert budget.take(10)


def test_budget_without_limits_always_allows() -> None:
    budget = Budget()
    assert not budget.limited and all(budget.take(1 << 30) for _ in range(100))


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("grpc://hub.example.com:8001", "hub.example.com:8001"),
        ("10.0.0.2:8001", "10.0.0.2:8001"),
        ("grpc://[::1]:8001", "[::1]:8001"),
    ],
)
def test_addresses_the_client_takes(url: str, target: str) -> None:
    assert parse_target(url) == target


@pytest.mark.parametrize(
    "url",
    [
        "http://hub:8001",
        "hub",
        "hub:",
        ":8001",
        "hub:0",
        "hub:99999",
        "::1:8001",
        "grpc://hub:80/x",
    ],
)
def test_addresses_the_client_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        parse_target(url)
