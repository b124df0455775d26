"""How a writer batches callers: each waits on a future its batch settles, under one shared deadline."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Deadline", "settle"]


def settle(waiting: Iterable[tuple[asyncio.Future[Any], Any]]) -> None:
    """Answer each caller waiting on a batch with its result, or its error when the result is
    an exception; a caller that stopped waiting (its future done) is skipped."""
    for future, result in waiting:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class Deadline:
    """Fails each watched future still waiting `timeout` seconds after it was watched, with the
    error `error()` makes; one timer serves them all. A future `release`d first is left alone:
    its write has begun and may commit, so only what that write did may answer it (a 503 means
    nothing was written).

    The ack path's callers used `asyncio.wait_for(asyncio.shield(future), timeout)`, which
    costs a timer, a wrapping future and their callbacks on every delivery: the PostgreSQL
    writer's `record` was 8% of the receiver's CPU under load with it, 3% without (py-spy).
    Futures are watched in the order their deadlines fall (one timeout for all), so the timer
    only ever looks at the oldest. A caller awaits its future directly; a caller cancelled
    meanwhile cancels only its own future, and the batch that holds it is written all the same
    (`settle` skips a future already done).
    """

    def __init__(self, timeout: float, error: Callable[[], BaseException]) -> None:
        self._timeout = timeout
        self._error = error
        self._watched: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._released: set[asyncio.Future[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, future: asyncio.Future[Any]) -> None:
        loop = future.get_loop()
        deadline = loop.time() + self._timeout
        watched = self._watched
        # Let go of the answered ones now: held for the whole timeout, a few seconds of
        # deliveries would outlive the young generations, and every full collection walks them.
        while watched and watched[0][1].done():
            self._released.discard(watched.popleft()[1])
        watched.append((deadline, future))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire, loop)

    def release(self, futures: Iterable[asyncio.Future[Any]]) -> None:
        """The writes that answer `futures` begin now: no deadline fails them from here on."""
        self._released.update(futures)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now, watched, released = loop.time(), self._watched, self._released
        while watched and (watched[0][0] <= now or watched[0][1].done()):
            _, future = watched.popleft()
            if future in released:
                released.discard(future)
            elif not future.done():
                future.set_exception(self._error())
        if watched:
            self._timer = loop.call_at(watched[0][0], self._expire, loop)
