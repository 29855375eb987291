"""Job timeouts: one loop timer for all running jobs, instead of an `asyncio.timeout` scope per job.

A scope per job costs a Timeout object, a TimerHandle pushed on the loop's heap and cancelled again,
and a few Python calls on each side: about a fifth of the worker's own CPU per no-op job. Here a
job is armed by one push on a heap of its own and disarmed by clearing a field; the heap is
compacted when disarmed entries outnumber the armed ones, and one TimerHandle waits for the
earliest deadline. An expired job's task is cancelled, as the scope would have done: `Execution`
turns that cancellation into JobTimeout (the task's cancel count is restored with `uncancel`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any

from backend.workers.worker_state import Run

COMPACT_SLACK = 64  # disarmed entries tolerated beyond the armed ones before the heap is rebuilt


class Deadlines:
    """Armed runs of one worker: each expires at most once, then its task is cancelled."""

    def __init__(self) -> None:
        # (deadline, sequence, run, task): the sequence keeps equal deadlines from comparing runs
        self._heap: list[tuple[float, int, Run, asyncio.Task[Any]]] = []
        self._sequence = itertools.count()
        self._armed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def arm(self, run: Run, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the current task (it runs `run`) at `deadline` (loop time) unless disarmed first."""
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a job's deadline needs the task that runs it")
        if loop is not self._loop:  # a worker reused on another loop: nothing carries over
            self._reset(loop)
        run.deadline = deadline
        self._armed += 1
        heapq.heappush(self._heap, (deadline, next(self._sequence), run, task))
        if deadline < self._timer_at:
            self._schedule(deadline)
        elif len(self._heap) > 2 * self._armed + COMPACT_SLACK:
            self._compact()

    def disarm(self, run: Run) -> None:
        """The run's handler ended (or was stopped): its deadline no longer applies."""
        if run.deadline is not None:
            run.deadline = None
            self._armed -= 1

    def _expire(self) -> None:
        """The timer fired: cancel the task of every armed run whose deadline has passed."""
        assert self._loop is not None
        due = max(self._loop.time(), self._timer_at)
        self._timer, self._timer_at = None, float("inf")
        heap = self._heap
        while heap and heap[0][0] <= due:
            deadline, _, run, task = heapq.heappop(heap)
            if run.deadline == deadline:  # still armed: this is its deadline
                self.disarm(run)
                run.timed_out = True
                task.cancel()
        while heap and heap[0][2].deadline != heap[0][0]:
            heapq.heappop(heap)  # disarmed: drop them rather than wake up for them
        if heap:
            self._schedule(heap[0][0])

    def _schedule(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._expire)

    def _compact(self) -> None:
        """Drop the entries of disarmed runs (most runs end long before their deadline)."""
        self._heap = [entry for entry in self._heap if entry[2].deadline == entry[0]]
        heapq.heapify(self._heap)

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for _, _, run, _ in self._heap:
            run.deadline = None
        self._heap, self._armed, self._loop = [], 0, loop
        self._timer, self._timer_at = None, float("inf")
