"""SIGTERM and SIGINT turned into a clean stop, for the commands that start servers or child processes.

Python's default SIGTERM ends the process at once: no ``finally`` runs, so
children started in their own session (a gateway subprocess, ``tritonserver``
and its backend stubs) outlive it. :func:`run_until_signalled` runs a command
with both signals turned into :class:`StopRequested`, raised in the main
thread, so the command unwinds through its ordinary cleanup (``with``
blocks, ``try/finally``, ``asyncio.run`` cancelling its tasks) and stops
what it started::

    def run(args: argparse.Namespace) -> int:
        return run_until_signalled(lambda: _serve(args))

Later signals are ignored while that cleanup runs, so a second Ctrl-C cannot
cut it short and leave children behind. Code that must not be interrupted
half-way even by the first signal (stopping a process group) runs inside
:func:`deferred_stop`: a signal arriving there is raised when it ends.

Exit status: ``128 + signal number``, as a shell reports a process killed by
it: **130** after SIGINT, **143** after SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["STOP_SIGNALS", "StopRequested", "deferred_stop", "exit_status", "run_until_signalled"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum: int) -> int:
    """The conventional exit status of a command stopped by ``signum``: 128 + its number (143, 130)."""
    return 128 + int(signum)


class StopRequested(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: unwind through the normal cleanup.

    A :class:`KeyboardInterrupt` so that ``except Exception`` (a benchmark
    section, a per-drone error handler) does not swallow it, and asyncio and
    :mod:`subprocess` treat it as the interruption it is.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return exit_status(self.signum)


class _StopSignals:
    """The handler state while a command runs: the signal received, and whether raising is deferred."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferring = 0
        self.pending = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            log.warning("%s received while stopping: still stopping what was started", name)
            return
        self.received = signum
        if self.deferring:
            log.info("%s received: stopping once the current step is done", name)
            self.pending = True
            return
        log.info("%s received: stopping", name)
        raise StopRequested(signum)


_active: _StopSignals | None = None


def run_until_signalled(work: Callable[[], int]) -> int:
    """Run ``work()`` with SIGTERM/SIGINT raising :class:`StopRequested`; its status, or 130/143 if stopped.

    Outside the main thread (where Python cannot handle signals) ``work`` runs as is.
    """
    global _active
    if threading.current_thread() is not threading.main_thread() or _active is not None:
        return work()
    state = _StopSignals()
    previous = {signum: signal.signal(signum, state.handle) for signum in STOP_SIGNALS}
    _active = state
    try:
        return work()
    except StopRequested as stop:
        log.info("stopped by %s", signal.Signals(stop.signum).name)
        return stop.exit_status
    finally:
        _active = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
    """Hold back a stop request until the block ends (then raise it); a no-op outside :func:`run_until_signalled`."""
    state = _active
    if state is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    state.deferring += 1
    try:
        yield
    finally:
        state.deferring -= 1
        if not state.deferring and state.pending:
            state.pending = False
            assert state.received is not None
            raise StopRequested(state.received)
