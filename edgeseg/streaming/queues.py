"""The queues between the stream's stages.

- realtime: :class:`LatestSlot` holds one item and ``put`` replaces it (the newest frame wins);
- every-frame: :class:`BlockingQueue` waits for room (back-pressure), nothing is lost;
- :class:`ResultQueue` carries inference results of several sources, each with its own policy.

Every ``put`` returns True when an item was dropped (replaced, or refused because the stream is
stopping), so the caller can count it; ``drain`` empties a queue at the end of a run and returns
what was still in it. Nothing waits without a timeout: a stop is always seen.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque

POLL = 0.05  # seconds between stop-flag checks in blocking waits


class LatestSlot:
    """A one-item queue where ``put`` replaces what is waiting."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.item = None
        self.has = False

    def put(self, item, stop: threading.Event | None = None) -> bool:
        with self.cond:
            dropped = self.has
            self.item, self.has = item, True
            self.cond.notify()
            return dropped

    def get(self, timeout: float):
        with self.cond:
            if not self.has and not self.cond.wait(timeout):
                raise queue.Empty
            if not self.has:
                raise queue.Empty
            item, self.item, self.has = self.item, None, False
            return item

    def empty(self) -> bool:
        with self.cond:
            return not self.has

    def drain(self) -> list:
        with self.cond:
            items = [self.item] if self.has else []
            self.item, self.has = None, False
            return items


class BlockingQueue:
    """A bounded FIFO whose ``put`` waits for room (back-pressure) but gives up when stopped."""

    def __init__(self, size: int) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=size)

    def put(self, item, stop: threading.Event | None = None) -> bool:
        while True:
            try:
                self.q.put(item, timeout=POLL)
                return False
            except queue.Full:
                if stop is not None and stop.is_set():
                    return True  # not queued: the caller counts it as dropped

    def get(self, timeout: float):
        return self.q.get(timeout=timeout)

    def empty(self) -> bool:
        return self.q.empty()

    def drain(self) -> list:
        items = []
        while True:
            try:
                items.append(self.q.get_nowait())
            except queue.Empty:
                return items


class ResultQueue:
    """Results of several sources, each with its mode: a realtime source keeps only its newest
    waiting result (``put`` replaces it), an every-frame source queues up to ``size`` with
    back-pressure. ``get`` hands out the oldest waiting result of any source."""

    def __init__(self, modes: list[str], size: int) -> None:
        self.cond = threading.Condition()
        self.realtime = [m == "realtime" for m in modes]
        self.items: list[deque] = [deque() for _ in modes]
        self.size = size
        self._order = itertools.count()

    def put(self, item, stop: threading.Event | None = None, key: int = 0) -> bool:
        with self.cond:
            q = self.items[key]
            dropped = False
            if self.realtime[key]:
                dropped = bool(q)
                q.clear()
            while len(q) >= self.size:
                if stop is not None and stop.is_set():
                    return True
                self.cond.wait(POLL)
            q.append((next(self._order), item))
            self.cond.notify_all()
            return dropped

    def get(self, timeout: float):
        with self.cond:
            if not any(self.items) and not self.cond.wait_for(lambda: any(self.items), timeout):
                raise queue.Empty
            oldest = min((q for q in self.items if q), key=lambda q: q[0][0])
            item = oldest.popleft()[1]
            self.cond.notify_all()  # room for a waiting every-frame put
            return item

    def empty(self) -> bool:
        with self.cond:
            return not any(self.items)

    def drain(self) -> list[list]:
        """Empty the queue; the results each source still had in it."""
        with self.cond:
            items = [[item for _, item in q] for q in self.items]
            for q in self.items:
                q.clear()
            self.cond.notify_all()
            return items
