"""Decode slots go to the read that began first, and typed reads keep one place throughout."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from xpcs_io import chunkread, decodeslots
from xpcs_io.decodeslots import OrderedSlots, one_read
from xpcs_io.facade import HDF5Facade
from xpcs_io.tools.demo import DemoSpec, write_native_file


def _wait_until(slots: OrderedSlots, queued: int) -> None:
    """Poll until ``queued`` threads wait on ``slots`` (they get there by themselves)."""
    deadline = time.monotonic() + 30
    while len(slots._waiting) != queued:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {queued} threads queued")
        time.sleep(0.001)


def test_a_free_slot_goes_to_the_lowest_place_not_the_first_to_ask() -> None:
    slots = OrderedSlots(1)
    slots.acquire()  # held by this test until every waiter queues
    order: list[str] = []

    def wait(name: str, place: int | None) -> None:
        token = None if place is None else decodeslots._place.set(place)
        try:
            with slots:
                order.append(name)
        finally:
            if token is not None:
                decodeslots._place.reset(token)

    # Asked in this order; places say who began first. No place: queued as it asks, so
    # behind every read that began before it and ahead of any that begins later.
    now = next(decodeslots._arrival)
    plan = [("late", now + 10**9), ("unplaced", None), ("early", now - 2), ("middle", now - 1)]
    threads = []
    for name, place in plan:
        thread = threading.Thread(target=wait, args=(name, place))
        thread.start()
        threads.append(thread)
        _wait_until(slots, len(threads))
    slots.release()
    for thread in threads:
        thread.join(timeout=30)
    assert order == ["early", "middle", "unplaced", "late"]


def test_slots_bound_how_many_hold_one_at_once() -> None:
    slots = OrderedSlots(2)
    lock = threading.Lock()
    inside = [0]
    peak = [0]
    entered = threading.Barrier(2)

    def hold(i: int) -> None:
        with one_read(), slots:
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            if i < 2:
                entered.wait(timeout=30)  # the first two are inside together
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert peak[0] == 2
    assert slots._free == 2
    assert not slots._waiting
    with pytest.raises(ValueError):
        OrderedSlots(0)


def test_one_read_keeps_the_outer_place() -> None:
    assert decodeslots._place.get() is None
    with one_read():
        outer = decodeslots._place.get()
        with one_read():
            assert decodeslots._place.get() == outer
        assert decodeslots._place.get() == outer
    assert decodeslots._place.get() is None
    with one_read():
        assert decodeslots._place.get() != outer  # a later read queues behind


def test_a_typed_read_decodes_every_dataset_under_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every gzip map of one read_qmap queues with the same place; two reads, two places."""
    spec = DemoSpec(shape=(700, 760), compression="gzip")  # maps above chunkread.MIN_BYTES
    paths = [tmp_path / "a.h5", tmp_path / "b.h5"]
    for path in paths:
        write_native_file(path, spec)
    seen: list[tuple[int | None, str]] = []
    decoded = chunkread._decoded

    def recorded(ds: Any, chunks: Any, codes: Any) -> Any:
        seen.append((decodeslots._place.get(), ds.name))
        return decoded(ds, chunks, codes)

    monkeypatch.setattr(chunkread, "_decoded", recorded)
    facade = HDF5Facade(root=tmp_path)
    for path in paths:
        facade.read_qmap(path.name)
    assert len(seen) >= 4
    assert all(place is not None for place, _ in seen)
    places = [place for place, _ in seen if place is not None]
    first, second = places[0], places[-1]
    assert first != second
    assert places == sorted(places)  # each read's datasets together, under its own place
    assert set(places) == {first, second}


def test_an_interrupted_waiter_leaves_the_queue_and_loses_no_slot() -> None:
    """A wait cut short (KeyboardInterrupt in a notebook, here an alarm's exception) must
    not leave a dead entry that the next release hands the slot to."""
    slots = OrderedSlots(1)
    slots.acquire()

    class AlarmError(Exception):
        pass

    def interrupt(*_: object) -> None:
        raise AlarmError

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(AlarmError):
            slots.acquire()  # blocks (the slot is held) until the alarm interrupts it
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not slots._waiting
    slots.release()
    assert slots._free == 1
    got = threading.Event()

    def take() -> None:
        with slots:
            got.set()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(timeout=30)
    assert got.is_set()
