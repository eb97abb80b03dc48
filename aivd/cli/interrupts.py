"""Ctrl-C (SIGINT) and SIGTERM as a request to stop cleanly: a long command finishes what it has in hand, saves
its state and exits with 128 + the signal's number; a second signal aborts at once."""

from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While the `with` block runs (in the main thread), the first SIGINT or SIGTERM is recorded in `signal` and
    the work is expected to poll `requested`; a second one writes `abort_message` and ends the process at once,
    which is safe where every record is committed as it is written."""

    def __init__(self, abort_message: str):
        self.abort_message = abort_message
        self.signal: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + (self.signal or 0)

    def _handle(self, number: int, _frame) -> None:
        if self.signal is None:
            self.signal = number
            return
        os.write(2, f"aborted: {self.abort_message}\n".encode(errors="replace"))  # no locks: safe in a handler
        os._exit(128 + number)

    def __enter__(self) -> StopRequest:
        self._previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
