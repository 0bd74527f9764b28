"""Ctrl-C and ``kill`` stop a run the same way, once: the writes in flight finish, the summary
so far is printed, the exit code is 130.

The first SIGINT or SIGTERM raises ``KeyboardInterrupt`` where the main thread is; any
signal after it, while that clean-up runs, is only noted, so a second ``kill`` (a supervisor
that sends SIGTERM twice, an impatient Ctrl-C) cannot cut the clean-up short and leave a
traceback or a process killed by its signal. This module imports nothing heavy, so the
handler is in place before torch starts to load.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Handler:
    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, signum, frame) -> None:
        if self.stopping:
            return  # already stopping: let the clean-up finish
        self.stopping = True
        raise KeyboardInterrupt


def stopping() -> bool:
    """Whether a stop has begun (a Ctrl-C or ``kill`` was handled): work in other threads,
    a download waiting on a server, can give up instead of holding the clean-up back."""
    handler = signal.getsignal(signal.SIGINT)
    return isinstance(handler, _Handler) and handler.stopping


def ignore_if_stopping() -> None:
    """Once a stop has begun, ignore SIGINT and SIGTERM for the rest of the process (its
    shutdown): the handlers above are Python functions, which interpreter shutdown replaces
    with the default ones, while an ignored signal stays ignored."""
    if stopping() and threading.current_thread() is threading.main_thread():
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def exit_after_stop(code: object) -> None:
    """End a process that was stopped with exit ``code`` (130), as ``sys.exit`` would, but
    so that the code is the one its parent sees.

    A ``KeyboardInterrupt`` that passes through Python code that C runs with ``PyRun_String``
    (torch does, while it loads) sets a process-wide flag that CPython never clears: run with
    ``python -m`` (torchrun's way), the interpreter then ends by killing itself with SIGINT
    after its shutdown, whatever code ``sys.exit`` gave, although the stop was handled. So
    this does the shutdown's part that matters here (threads still running are waited for,
    ``atexit`` functions run, standard streams flushed) and leaves with ``os._exit``."""
    ignore_if_stopping()
    status = code if isinstance(code, int) else (0 if code is None else 1)
    shutdown = getattr(threading, "_shutdown", None)  # joins non-daemon threads, as exit does
    if shutdown is not None and threading.current_thread() is threading.main_thread():
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that has gone, a stream already closed
            pass
    os._exit(status)


def install() -> _Handler | None:
    """Handle SIGINT and SIGTERM as above for the rest of the process (the command line's
    entry point calls this first). Only the main thread can set handlers; elsewhere nothing
    changes and ``None`` comes back."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = _Handler()
    for signum in _SIGNALS:
        signal.signal(signum, handler)
    return handler


@contextlib.contextmanager
def stop_once() -> Iterator[None]:
    """The same handling for one block (a run called as a library, or from tests), with the
    previous handlers back afterwards. A stop that began inside the block carries over to a
    handler of this module's that was in place before, so a signal during the summary that
    follows is still only noted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    handler = install()
    try:
        yield
    finally:
        for signum, before in previous.items():
            if isinstance(before, _Handler) and handler is not None and handler.stopping:
                before.stopping = True
            signal.signal(signum, before)
