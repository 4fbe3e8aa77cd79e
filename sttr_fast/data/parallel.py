"""An ordered, memory-bounded parallel map over worker processes."""
from __future__ import annotations

import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor


def ordered_map(function, items, workers: int, chunk_size: int = 4, chunks_ahead: int = 4):
    """Yield ``function(item)`` for each item, in order, computed by ``workers`` processes.

    At most ``workers * chunks_ahead`` chunks are in flight, so results never pile up in memory
    when the consumer is slower than the workers. ``workers <= 1`` runs in this process.
    """
    items = list(items)
    if workers <= 1:
        yield from map(function, items)
        return
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_leave_interrupts_to_parent)
    pending = deque()
    try:
        for start in range(0, len(items), chunk_size):
            pending.append(pool.submit(_apply, function, items[start:start + chunk_size]))
            if len(pending) >= workers * chunks_ahead:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=not pending, cancel_futures=True)


def _apply(function, chunk):
    return [function(item) for item in chunk]


def _leave_interrupts_to_parent() -> None:
    # Ctrl-C reaches the whole process group; the parent stops the run and saves its progress.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
