"""`FairTurns`: turns on a scarce worker (an analyzer, a model) shared round-robin between clients.

A service that runs one batch at a time in arrival order lets one client with big requests make every other
client wait for all of its work. Here a request does its work in small slices, one turn each. When a turn ends
it goes to the client that has waited longest for one: clients take turns, and within a client its requests do.
A client sending a 512-region request in a loop therefore delays another client's request by one slice, not by
the whole of its request.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class FairTurns:
    """At most `slots` turns at once; waiting turns are granted round-robin over clients. For one event loop."""

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self._free = slots
        self._waiting: OrderedDict[Hashable, deque[asyncio.Future]] = OrderedDict()

    @asynccontextmanager
    async def turn(self, client: Hashable) -> AsyncIterator[None]:
        """Wait for a turn for `client`, and hold it inside the `async with`. Cancelling the wait (a client that
        went away, a deadline) leaves the queue without losing anyone else's turn."""
        if self._free and not self._waiting:
            self._free -= 1
        else:
            granted = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(client, deque()).append(granted)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # the turn came just as the wait was cancelled: pass it on
                else:
                    self._forget(client, granted)
                raise
        try:
            yield
        finally:
            self._release()

    def _forget(self, client: Hashable, granted: asyncio.Future) -> None:
        queue = self._waiting.get(client)
        if queue is not None and granted in queue:
            queue.remove(granted)
            if not queue:
                del self._waiting[client]

    def _release(self) -> None:
        while self._waiting:
            client, queue = next(iter(self._waiting.items()))
            granted = queue.popleft()
            if queue:
                self._waiting.move_to_end(client)  # its next request waits behind every other client
            else:
                del self._waiting[client]
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1
