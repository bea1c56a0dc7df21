"""Dynamic micro-batching: items of requests that arrive within a window share one forward pass.

Requests put their items (token-id sequences) on one queue. A single task on the event loop
takes up to ``max_batch`` items once the oldest waiting item has waited ``window_s`` (or at
once when a full batch is waiting), runs the model in one worker thread (off the event
loop), and hands each request its rows. A request larger than ``max_batch`` is spread over
several batches; the rest of a batch can be other requests' items. When the queue holds
``max_queue`` items a new request is refused at once (``QueueFull``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The queue cannot take the request's items now."""


@dataclass
class BatchStats:
    """What one batch did (for metrics)."""

    size: int
    tokens: int
    padded_tokens: int
    queue_wait_s: float  # the oldest item's wait
    compute_s: float


@dataclass
class _Job:
    items: list[list[int]]
    future: asyncio.Future[np.ndarray]
    out: np.ndarray | None = None
    remaining: int = 0


@dataclass(order=True)
class _Item:
    enqueued: float
    job: _Job = field(compare=False)
    index: int = field(compare=False)


class MicroBatcher:
    def __init__(
        self,
        embed: Callable[[list[list[int]]], np.ndarray],
        *,
        max_batch: int,
        window_s: float,
        max_queue: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        self._embed = embed
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self._on_batch = on_batch or (lambda s: None)
        self._on_queue = on_queue or (lambda n: None)
        self._queue: collections.deque[_Item] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="encoder-worker"
        )
        self.batches = 0

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a running batch)."""
        return len(self._queue)

    def _ensure_running(self) -> None:
        # started lazily on the serving loop (an ASGI transport in tests has no lifespan)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            if self._loop is not loop:  # a new loop (tests): items of the old one are lost
                self._queue.clear()
            self._loop = loop
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="batcher")

    async def submit(self, items: list[list[int]]) -> np.ndarray:
        """Embed ``items``; raises QueueFull at once when they do not fit in the queue."""
        if not items:
            raise ValueError("no items")
        if len(self._queue) + len(items) > self.max_queue:
            raise QueueFull(
                f"queue holds {len(self._queue)} items, the request has {len(items)}, "
                f"the limit is {self.max_queue}"
            )
        self._ensure_running()
        loop = asyncio.get_running_loop()
        job = _Job(items, loop.create_future(), remaining=len(items))
        now = time.monotonic()
        self._queue.extend(_Item(now, job, i) for i in range(len(items)))
        self._on_queue(len(self._queue))
        assert self._wake is not None
        self._wake.set()
        return await job.future

    def _drop_cancelled(self) -> None:
        if any(it.job.future.done() for it in self._queue):
            self._queue = collections.deque(it for it in self._queue if not it.job.future.done())
            self._on_queue(len(self._queue))

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            # wait for more items until the oldest has waited the window or a batch is full
            deadline = self._queue[0].enqueued + self.window_s
            while len(self._queue) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=left)
                except TimeoutError:
                    break
            self._drop_cancelled()
            if not self._queue:
                continue
            take = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self._on_queue(len(self._queue))
            seqs = [it.job.items[it.index] for it in take]
            started = time.monotonic()
            try:
                emb = await loop.run_in_executor(self._executor, self._embed, seqs)
            except Exception as e:  # the model failed: every request in the batch gets it
                for it in take:
                    if not it.job.future.done():
                        it.job.future.set_exception(e)
                continue
            compute = time.monotonic() - started
            self.batches += 1
            self._on_batch(
                BatchStats(
                    size=len(take),
                    tokens=sum(len(s) for s in seqs),
                    padded_tokens=len(seqs) * max(len(s) for s in seqs),
                    queue_wait_s=started - take[0].enqueued,
                    compute_s=compute,
                )
            )
            for row, it in zip(emb, take, strict=True):
                job = it.job
                if job.future.done():
                    continue
                if job.out is None:
                    job.out = np.empty((len(job.items), emb.shape[1]), dtype=np.float32)
                job.out[it.index] = row
                job.remaining -= 1
                if job.remaining == 0:
                    job.future.set_result(job.out)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            if self._loop is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        for it in self._queue:
            if not it.job.future.done():
                it.job.future.cancel()
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
