"""The order of the broker's queues (tsslurm/broker/queueing.py): urgent first, then on-time
requests earliest TTFT deadline first, then late ones oldest deadline first."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsslurm.broker.queueing import DeadlineQueue, ttft_deadline
from tsslurm.profile.schema import Slo

pytestmark = pytest.mark.timeout(60)


def drain(queue: DeadlineQueue[str], now: float) -> list[str]:
    order = []
    while queue:
        assert queue.head(now) is not None
        order.append(queue.pop())
    return order


def test_on_time_by_deadline_then_late_then_urgent_before_all() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    for item, deadline in (("late-2", 2.0), ("on-time-9", 9.0), ("late-1", 1.0),
                           ("on-time-5", 5.0)):
        queue.push(item, deadline)
    queue.push_urgent("back")
    assert len(queue) == 5
    assert drain(queue, now=3.0) == ["back", "on-time-5", "on-time-9", "late-1", "late-2"]


def test_an_item_becomes_late_as_time_passes() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    queue.push("a", 1.0)
    queue.push("b", 2.0)
    assert queue.head(0.5) == "a"
    assert queue.head(1.5) == "b"
    assert queue.pop() == "b" and queue.head(1.5) == "a"


def test_late_count() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    for item, deadline in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        queue.push(item, deadline)
    queue.push_urgent("u")
    assert [queue.late_count(now) for now in (0.5, 1.5, 2.5, 3.5)] == [0, 1, 2, 3]


def test_remove_from_anywhere() -> None:
    queue: DeadlineQueue[str] = DeadlineQueue()
    for item, deadline in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        queue.push(item, deadline)
    queue.push_urgent("u")
    queue.head(2.5)
    queue.remove("b")
    queue.remove("u")
    assert sorted(queue) == ["a", "c"]
    assert drain(queue, 2.5) == ["c", "a"]
    with pytest.raises(ValueError):
        queue.remove("zzz")


def test_deadline_is_arrival_plus_the_tier_target() -> None:
    slo = Slo()
    assert ttft_deadline(slo, 10.0, 100) == pytest.approx(10.25)
    assert ttft_deadline(slo, 10.0, 1000) == pytest.approx(10.4)
    assert ttft_deadline(slo, 10.0, 20_000) == pytest.approx(10.0 + 2.0 + 20_000 / 6667)


@given(st.lists(st.tuples(st.floats(0, 100), st.booleans()), max_size=40), st.floats(0, 100))
def test_any_queue_drains_on_time_first_each_by_deadline(entries: list[tuple[float, bool]],
                                                         now: float) -> None:
    queue: DeadlineQueue[int] = DeadlineQueue()
    deadlines = {}
    for index, (deadline, _) in enumerate(entries):
        queue.push(index, deadline)
        deadlines[index] = deadline
    order = drain(queue, now)
    assert sorted(order) == list(range(len(entries)))
    keys = [(deadlines[i] < now, deadlines[i]) for i in order]
    assert keys == sorted(keys)
