"""The sign-in rate limit: after `max_failures` failed sign-ins for one username from one client address within
`window_s`, that pair is refused for `lockout_s`.

Kept in memory, per process. That is enough for what it is for: an online password guesser gets 5 guesses per 5
minutes per username and address, against passwords of at least 12 characters hashed with argon2. Its limits:
a restart forgets it, several console processes each count on their own, an attacker with many addresses gets 5
guesses from each, and behind a reverse proxy every client has the proxy's address (so one client's failures
lock the name for everyone behind it). Counting per (username, address) rather than per username means a guesser
cannot lock a real user out from another address. The state is bounded: at most `max_tracked` pairs are kept,
the oldest dropped first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class LoginLimiter:
    def __init__(self, max_failures: int = 5, window_s: float = 300.0, lockout_s: float = 300.0, max_tracked: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_tracked = max_tracked
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._locked_until: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def retry_after(self, username: str, address: str) -> float | None:
        """Seconds until this pair may try again, or None when it may try now."""
        with self._lock:
            until = self._locked_until.get((username, address))
            now = self._clock()
            if until is None or until <= now:
                self._locked_until.pop((username, address), None)
                return None
            return until - now

    def failed(self, username: str, address: str) -> bool:
        """Count a failed sign-in; True when it locks the pair."""
        key = (username, address)
        with self._lock:
            now = self._clock()
            failures = self._failures.pop(key, None) or deque()
            failures.append(now)
            while failures[0] <= now - self.window_s:
                failures.popleft()
            locks = len(failures) >= self.max_failures
            if locks:  # the count starts afresh when the lock ends
                self._locked_until[key] = now + self.lockout_s
            else:
                self._failures[key] = failures  # re-inserted: the dict is ordered by last failure, oldest first
            for tracked in (self._failures, self._locked_until):
                while len(tracked) > self.max_tracked:
                    del tracked[next(iter(tracked))]
            return locks

    def succeeded(self, username: str, address: str) -> None:
        """A successful sign-in forgets the pair's failures."""
        with self._lock:
            self._failures.pop((username, address), None)
