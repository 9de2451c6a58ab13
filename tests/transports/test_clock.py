"""Clocks: virtual time moves only once every thread waits, and a notification wakes a waiter."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from transports.clock import MONOTONIC, VirtualClock


def _run(clock: VirtualClock, *calls: Callable[[], object]) -> list[object]:
    """Runs each call on its own thread of `clock`; returns what each returned."""
    out: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            out[i] = calls[i]()
        finally:
            clock.leave()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_sleeping_threads_wake_in_order_of_their_virtual_times() -> None:
    clock = VirtualClock(threads=3)
    order: list[float] = []

    def sleeper(*naps: float) -> Callable[[], float]:
        def nap() -> float:
            for s in naps:
                clock.sleep(s)
                order.append(clock.now())
            return clock.now()
        return nap

    assert _run(clock, sleeper(0.3), sleeper(0.1, 0.1), sleeper(0.05, 1.0)) == [0.3, 0.2, 1.05]
    assert order == [0.05, 0.1, 0.2, 0.3, 1.05]


def test_a_notification_wakes_a_waiter_before_its_timeout() -> None:
    clock = VirtualClock(threads=2)
    cond = threading.Condition()
    flag: list[bool] = []

    def waiter() -> float:
        with cond:
            while not flag:
                clock.wait(cond, 10.0)
            return clock.now()

    def notifier() -> float:
        clock.sleep(0.2)
        with cond:
            flag.append(True)
            clock.notify_all(cond)
        return clock.now()

    assert _run(clock, waiter, notifier) == [0.2, 0.2]


def test_a_wait_nobody_notifies_ends_at_its_timeout() -> None:
    clock = VirtualClock(start=5.0)
    cond = threading.Condition()
    with cond:
        clock.wait(cond, 0.5)
    assert clock.now() == 5.5


def test_a_clock_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="threads >= 1"):
        VirtualClock(threads=0)


def test_the_monotonic_clock_is_real_time() -> None:
    cond = threading.Condition()
    t = MONOTONIC.now()
    with cond:
        MONOTONIC.wait(cond, 0.001)
        MONOTONIC.notify_all(cond)
    MONOTONIC.sleep(0.001)
    assert MONOTONIC.now() > t
