"""store.batching.Deadline: the one timer that bounds how long a delivery waits for its batch."""

from __future__ import annotations

import asyncio

import pytest

from receiver.errors import StoreUnavailable
from store.batching import Deadline, settle

pytestmark = pytest.mark.anyio


def _deadline(timeout: float) -> Deadline:
    return Deadline(timeout, lambda: StoreUnavailable("too slow"))


async def test_a_future_still_waiting_at_its_deadline_fails_and_a_settled_one_keeps_its_result() -> None:
    loop = asyncio.get_running_loop()
    deadline = _deadline(0.05)
    answered, forgotten = loop.create_future(), loop.create_future()
    deadline.watch(answered)
    deadline.watch(forgotten)
    settle([(answered, "kept")])
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(forgotten, 5)
    assert answered.result() == "kept"


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test moves it: timers fire in order of
    their deadlines however busy the machine is."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def advance_to(self, now: float) -> None:
        """Move the clock and run every timer now due (and what they wake)."""
        self.now = now
        self.run_until_complete(asyncio.sleep(0))  # wait-ok: one turn of the loop; no time passes


def test_each_future_gets_its_own_deadline_not_the_first_ones() -> None:
    loop = ManualClockLoop()
    try:
        deadline = _deadline(0.3)
        early = loop.create_future()
        deadline.watch(early)  # due at 1000.3
        loop.advance_to(1000.2)
        late = loop.create_future()
        deadline.watch(late)  # due at 1000.5, not at the first one's deadline
        assert not early.done() and not late.done()
        loop.advance_to(1000.3)
        assert isinstance(early.exception(), StoreUnavailable)
        assert not late.done()
        loop.advance_to(1000.499)
        assert not late.done()
        loop.advance_to(1000.5)
        assert isinstance(late.exception(), StoreUnavailable)
    finally:
        loop.close()


async def test_a_cancelled_caller_does_not_stop_the_others_or_the_timer() -> None:
    loop = asyncio.get_running_loop()
    deadline = _deadline(0.05)
    gone, waiting = loop.create_future(), loop.create_future()
    deadline.watch(gone)
    deadline.watch(waiting)
    gone.cancel()  # its caller was cancelled; the batch settles the rest and skips it
    settle([(gone, "ignored")])
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(waiting, 5)
    assert gone.cancelled()


async def test_answered_futures_are_let_go_before_their_deadline() -> None:
    # Held for the whole timeout, seconds of deliveries would outlive the young GC generations.
    loop = asyncio.get_running_loop()
    deadline = _deadline(60)
    answered = [loop.create_future() for _ in range(1000)]
    for future in answered:
        deadline.watch(future)
    settle((future, None) for future in answered)
    deadline.watch(loop.create_future())
    assert len(deadline._watched) == 1


async def test_a_released_future_is_answered_by_its_write_not_by_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadline = _deadline(0.05)
    begun, waiting = loop.create_future(), loop.create_future()
    deadline.watch(begun)
    deadline.watch(waiting)
    deadline.release([begun])  # its batch is being written: it may commit
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(waiting, 5)
    assert not begun.done()  # the timer has passed it by
    settle([(begun, "committed")])
    assert await begun == "committed"
