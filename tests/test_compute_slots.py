"""The engine's compute threads: results in order, the first failure raised, and never more
pieces of work at once than slots, however many requests ask."""

from __future__ import annotations

import threading
import time

import pytest

from facematch.engine.compute_slots import ComputeSlots


def test_map_returns_results_in_item_order():
    slots = ComputeSlots(2)
    assert slots.map(lambda x: x * x, [3, 1, 2]) == [9, 1, 4]


def test_the_first_failing_item_in_order_is_raised_after_all_finish():
    slots = ComputeSlots(2)
    done = []

    def work(x):
        done.append(x)
        if x in ("b", "c"):
            raise ValueError(x)
        return x

    with pytest.raises(ValueError, match="^b$"):
        slots.map(work, ["a", "b", "c"])
    assert sorted(done) == ["a", "b", "c"]


def test_concurrent_requests_never_run_more_pieces_than_slots():
    slots = ComputeSlots(2)
    running, peak, lock = [0], [0], threading.Lock()

    def work(_):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    requests = [threading.Thread(target=slots.map, args=(work, range(4))) for _ in range(3)]
    for thread in requests:
        thread.start()
    for thread in requests:
        thread.join()
    assert peak[0] == 2
