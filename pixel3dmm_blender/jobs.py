"""Background work for the reconstruction: one worker thread, a queue of events and a cancel flag.

The worker never touches bpy. It reports through :class:`Progress`, :class:`Finished` and :class:`Failed`
events, which the modal operator drains on the main thread. At most one job runs at a time
(:func:`active_job`).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

Work = Callable[[Callable[[str, float], None], Callable[[], bool]], Any]
"""A function ``work(on_progress, should_cancel) -> result`` run on the worker thread."""


@dataclass(frozen=True)
class Progress:
    stage: str
    fraction: float  # 0..1 over the whole job


@dataclass(frozen=True)
class Finished:
    result: Any


@dataclass(frozen=True)
class Failed:
    error: BaseException


class Job:
    """Runs ``work`` on a daemon thread; events come out of :meth:`drain` in order."""

    def __init__(self, work: Work):
        self._work = work
        self._events: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pixel3dmm-reconstruction", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            result = self._work(self._report, self._cancel.is_set)
        except BaseException as exc:  # handed to the main thread, which reports it
            self._events.put(Failed(exc))
        else:
            self._events.put(Finished(result))

    def _report(self, stage: str, fraction: float) -> None:
        self._events.put(Progress(str(stage), min(1.0, max(0.0, float(fraction)))))

    def cancel(self) -> None:
        """Ask the worker to stop at its next cancellation check; its result will be ignored."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def drain(self) -> list:
        """All events queued so far, without blocking."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events


_active: Job | None = None


def active_job() -> Job | None:
    """The running job, if any."""
    return _active


def start_job(work: Work) -> Job:
    """Start ``work`` on a new worker thread and make it the active job."""
    global _active
    if _active is not None:
        raise RuntimeError("a reconstruction is already running")
    job = Job(work)
    _active = job
    job.start()
    return job


def release_job(job: Job) -> None:
    """Forget ``job`` as the active job (after it finished, failed or was cancelled)."""
    global _active
    if _active is job:
        _active = None


def cancel_active() -> None:
    """Cancel and forget the active job, if any (used when the add-on is disabled)."""
    job = _active
    if job is not None:
        job.cancel()
        release_job(job)
