"""Micro-batching: requests that arrive close together share one forward pass.

A `MicroBatcher` queues each request's items. Its loop takes the oldest request, waits at most `window_s`
for more with the same batching key (generation options, say), then runs up to `max_batch` items in one call
of its function on the model's worker thread, so the event loop keeps accepting requests meanwhile. While a
batch runs, new requests queue up and form the next batch: under load, batches grow by themselves; alone, a
request waits only the window. A batch that fails is retried request by request, so one bad input fails only
its own request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from frugal_lm.serve.metrics import Metrics


@dataclass
class _Entry:
    items: list[Any]
    key: Hashable
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Batch calls of `fn(items) -> results` (one result per item, in order) across concurrent requests.

    Args:
        fn: runs on `executor`'s thread; one call sees items of one batching key only.
        executor: the model's worker (one thread per model keeps forward passes from competing for cores).
        model, op: metric labels.
        window_s: how long the oldest request waits for company before its batch runs.
        max_batch: most items per call (a single larger request still runs whole, alone).
        retry_alone: after a failed batch, rerun its requests one by one (off for streams, which would
            repeat the text they already sent).
        slots: how many batches may run at once, shared by the batchers of one model (its worker threads);
            while all are busy, requests queue and the next batch grows.
    """

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], executor: ThreadPoolExecutor, model: str,
                 op: str, metrics: Metrics, window_s: float = 0.005, max_batch: int = 32,
                 retry_alone: bool = True, slots: asyncio.Semaphore | None = None):
        self.fn, self.executor, self.model, self.op, self.metrics = fn, executor, model, op, metrics
        self.window_s, self.max_batch, self.retry_alone = window_s, max_batch, retry_alone
        self.slots = slots or asyncio.Semaphore(1)
        self._running: set[asyncio.Task] = set()
        self._pending: deque[_Entry] = deque()
        self._arrival: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, items: list[Any], key: Hashable = None) -> list[Any]:
        """Queue `items` and wait for their results (exceptions of `fn` are raised here)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._arrival = asyncio.Event()
            self._task = loop.create_task(self._loop())
        entry = _Entry(list(items), key, loop.create_future())
        self._pending.append(entry)
        self._gauge()
        assert self._arrival is not None
        self._arrival.set()
        return await entry.future

    def _gauge(self) -> None:
        self.metrics.set("frugal_queue_depth", len(self._pending), model=self.model, op=self.op)

    def _ready(self, key: Hashable) -> int:
        return sum(len(e.items) for e in self._pending if e.key == key)

    async def _loop(self) -> None:
        assert self._arrival is not None
        while True:
            if not self._pending:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            await self.slots.acquire()  # a free worker first: meanwhile more requests join the queue
            if not self._pending:
                self.slots.release()
                continue
            first = self._pending[0]
            deadline = first.arrived + self.window_s
            while self._ready(first.key) < self.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), left)
                except asyncio.TimeoutError:  # noqa: UP041 - the same class only from Python 3.11
                    break
            batch = self._take(first.key)
            self._gauge()
            if not batch:
                self.slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run_then_release(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_then_release(self, batch: list[_Entry]) -> None:
        try:
            await self._run(batch)
        finally:
            self.slots.release()

    def _take(self, key: Hashable) -> list[_Entry]:
        """The oldest entries of `key` up to `max_batch` items (at least one entry); others stay queued."""
        batch, kept, size = [], deque(), 0
        for entry in self._pending:
            fits = not batch or size + len(entry.items) <= self.max_batch
            if entry.key == key and fits and not entry.future.done():
                batch.append(entry)
                size += len(entry.items)
            elif not entry.future.done():  # a cancelled request (client gone) is dropped here
                kept.append(entry)
        self._pending = kept
        return batch

    async def _run(self, batch: list[_Entry]) -> None:
        loop = asyncio.get_running_loop()
        items = [x for e in batch for x in e.items]
        start = time.perf_counter()
        for e in batch:
            self.metrics.observe("frugal_queue_wait_seconds", start - e.arrived, model=self.model, op=self.op)
        try:
            results = await loop.run_in_executor(self.executor, self._call, items)
        except Exception as exc:  # noqa: BLE001 - reported to the requests, never to the loop
            if len(batch) == 1 or not self.retry_alone:
                for e in batch:
                    self._fail(e, exc)
            else:  # find the culprit: every other request still gets its answer
                for e in batch:
                    await self._run([e])
            return
        self.metrics.observe("frugal_batch_size", len(items), model=self.model, op=self.op)
        self.metrics.observe("frugal_batch_requests", len(batch), model=self.model, op=self.op)
        self.metrics.observe("frugal_batch_duration_seconds", time.perf_counter() - start, model=self.model,
                             op=self.op)
        self.metrics.inc("frugal_items_total", len(items), model=self.model, op=self.op)
        offset = 0
        for e in batch:
            n = len(e.items)
            if not e.future.done():
                e.future.set_result(list(results[offset:offset + n]))
            offset += n

    def _call(self, items: list[Any]) -> Sequence[Any]:
        results = self.fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"{self.op}: {len(results)} results for {len(items)} items")
        return results

    def _fail(self, entry: _Entry, exc: Exception) -> None:
        self.metrics.inc("frugal_errors_total", model=self.model, op=self.op, error=type(exc).__name__)
        if not entry.future.done():
            entry.future.set_exception(exc)

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
