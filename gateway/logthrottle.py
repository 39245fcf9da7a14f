"""Rate-limited logging: one line per key per window, then a count of what was held back.

A drone that changes its camera 5,000 times, or a client that sends 5,000
wrong tokens, must not write 5,000 lines. :class:`LogThrottle` logs the first
line of a key (a drone id, a remote address) in each window and counts the
rest; the next line logged for that key says how many were held back::

    throttle = LogThrottle(log, window_s=10.0)
    throttle.log(logging.WARNING, remote, "refused %s: %s", path, why)
    # ... "refused /offer: wrong token (412 more in the last 10 s)"

The keys are bounded (the oldest are forgotten first), so a flood of distinct
keys costs bounded memory. Not thread-safe: call it from the event loop.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["LogThrottle"]


class LogThrottle:
    """Log at most one line per key every ``window_s`` seconds, with the count held back since the last."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        window_s: float = 10.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window_s > 0 or max_keys < 1:
            raise ValueError(f"window_s must be positive and max_keys at least 1, got {window_s}, {max_keys}")
        self.logger = logger
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        # key -> [start of its window, lines held back in it]
        self._windows: OrderedDict[Hashable, list[float]] = OrderedDict()

    def log(self, level: int, key: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` for ``key`` unless a line of ``key`` was logged in this window; True if logged."""
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window[0] < self.window_s:
            window[1] += 1
            return False
        held_back = int(window[1]) if window is not None else 0
        if held_back:
            msg = f"{msg} ({held_back} more in the last {self.window_s:g} s)"
        self._windows[key] = [now, 0]
        self._windows.move_to_end(key)
        while len(self._windows) > self.max_keys:
            self._windows.popitem(last=False)
        self.logger.log(level, msg, *args)
        return True
