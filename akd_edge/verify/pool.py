"""Verify's attacks spread over worker processes of one thread each: the attacks' own code, on every core.

Square (on an onnxruntime session) and each attack of AutoAttack (on the torch model) work batch by batch, and
a batch's result depends only on its images and the seed: each batch reseeds the attack's random numbers.
A batch is a :class:`PoolTask`; a *job* (the transfer examples, Square on one model file) is a generator that
yields the tasks of one step, receives their results, and yields the next step's or returns its result.
:func:`run_jobs` runs the tasks of all jobs on ``workers`` processes, so a two-core machine attacks two
batches at once, and torch's OpenMP threads never wait on onnxruntime's spinning ones (on a busy 2-core
machine the two thread pools in one process slowed Square's loop 5-10x). The results are those of running
the same tasks one after another in this process: the same code on the same inputs, in any order.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

ProgressFn = Callable[[str, int, int], None]
"""``on_progress(label, done, total)``, as :func:`akd_edge.verify.command.verify_export` takes it."""
Job = Generator[list["PoolTask"], list[Any], Any]
"""Yields a list of tasks, is sent their results (in the same order), returns the job's result."""
POLL_S = 0.2


@dataclass
class PoolTask:
    """One batch of one attack: ``fn(*args, progress)`` in a worker, ``progress(done)`` counting up to ``units``."""

    fn: Callable[..., Any]
    """A module-level function (workers import it by name)."""
    args: tuple[Any, ...]
    units: int
    """Progress units of the whole task (Square: its queries; AutoAttack: about its forward passes)."""


@dataclass
class JobTiming:
    """Wall time from the job's first task to its last, and the seconds its tasks ran in all."""

    started: float | None = None
    ended: float = 0.0
    task_s: float = 0.0
    tasks: int = 0

    def seconds(self) -> dict[str, float]:
        wall = 0.0 if self.started is None else self.ended - self.started
        return {"wall_s": round(wall, 2), "task_s": round(self.task_s, 2), "tasks": self.tasks}


@dataclass
class _Job:
    label: str
    gen: Job
    total: int = 0
    """Progress units of the tasks handed out so far (the next step's are added when it starts)."""
    expected: int = 0
    done: dict[int, int] = field(default_factory=dict)
    waiting: dict[int, Any] = field(default_factory=dict)
    step: list[int] = field(default_factory=list)
    result: Any = None
    finished: bool = False
    timing: JobTiming = field(default_factory=JobTiming)


# -- the worker side ------------------------------------------------------------------------------------------

BOOT = "import pickle, sys; a = pickle.load(sys.stdin.buffer); sys.path[:] = a['path']; from {0} import serve; serve(a)"
"""A worker is ``python -c BOOT``: it takes this process's ``sys.path`` and its end of a socket pair from its
stdin, and never imports the caller's ``__main__`` (multiprocessing's spawn re-runs a script without a
``__main__`` guard in every child; ``ae.verify`` in such a script must not)."""


def serve(boot: dict[str, Any]) -> None:
    """A worker's loop: take a task, run it (sending progress), send its result or its exception; stop on None."""
    from multiprocessing.connection import Connection

    import torch

    torch.set_num_threads(1)
    with Connection(boot["fd"]) as conn, contextlib.suppress(EOFError, OSError):  # the parent stopped: so do we
        while (message := conn.recv()) is not None:
            uid, fn, args = message
            last = [0.0]

            def progress(done: int, uid: int = uid, last: list[float] = last) -> None:
                if time.monotonic() - last[0] >= POLL_S:
                    last[0] = time.monotonic()
                    conn.send(("progress", uid, done))

            start = time.perf_counter()
            try:
                result = fn(*args, progress)
            except Exception as err:  # sent to the parent, which raises it
                _send_error(conn, uid, err)
                continue
            conn.send(("done", uid, (result, time.perf_counter() - start)))


def _send_error(conn: Any, uid: int, err: Exception) -> None:
    try:
        conn.send(("error", uid, err))
    except Exception:  # an exception that does not pickle: its type and text
        conn.send(("error", uid, RuntimeError(f"{type(err).__name__}: {err}")))


# -- the scheduling side ----------------------------------------------------------------------------------------


class _Scheduler:
    """Hands out the jobs' tasks (earlier jobs first), collects results, starts each job's next step."""

    def __init__(self, jobs: dict[str, tuple[str, Job, int]], on_progress: ProgressFn | None) -> None:
        self.jobs = {key: _Job(label, gen, expected=units) for key, (label, gen, units) in jobs.items()}
        self.on_progress = on_progress
        self.ready: list[tuple[int, str, int, PoolTask]] = []
        self.tasks: dict[int, tuple[str, PoolTask]] = {}
        for key in self.jobs:
            self._send(key, None)

    def _send(self, key: str, results: list[Any] | None) -> None:
        job = self.jobs[key]
        try:
            step = job.gen.send(results)  # type: ignore[arg-type]
        except StopIteration as stop:
            job.result, job.finished = stop.value, True
            self._report(job)
            return
        order = list(self.jobs).index(key)
        job.step = []
        for task in step:
            uid = len(self.tasks)
            self.tasks[uid] = (key, task)
            job.step.append(uid)
            job.total += task.units
            self.ready.append((order, key, uid, task))
        self.ready.sort(key=lambda item: (item[0], item[2]))
        if not step:
            self._send(key, [])

    def next_task(self) -> tuple[int, PoolTask] | None:
        if not self.ready:
            return None
        _, key, uid, task = self.ready.pop(0)
        timing = self.jobs[key].timing
        timing.started = time.perf_counter() if timing.started is None else timing.started
        return uid, task

    def progress(self, uid: int, done: int) -> None:
        key, task = self.tasks[uid]
        self.jobs[key].done[uid] = min(done, task.units)
        self._report(self.jobs[key])

    def finish(self, uid: int, result: Any, seconds: float) -> None:
        key, task = self.tasks[uid]
        job = self.jobs[key]
        job.timing.ended, job.timing.task_s, job.timing.tasks = (
            time.perf_counter(),
            job.timing.task_s + seconds,
            job.timing.tasks + 1,
        )
        job.done[uid] = task.units
        job.waiting[uid] = result
        self._report(job)
        if all(u in job.waiting for u in job.step):
            results = [job.waiting.pop(u) for u in job.step]
            self._send(key, results)

    def _report(self, job: _Job) -> None:
        if self.on_progress is None:
            return
        total = max(job.expected, job.total, 1)
        done = total if job.finished else min(sum(job.done.values()), total - 1)
        self.on_progress(job.label, done, total)

    @property
    def finished(self) -> bool:
        return all(job.finished for job in self.jobs.values())


def run_jobs(
    jobs: dict[str, tuple[str, Job, int]], workers: int, on_progress: ProgressFn | None = None
) -> tuple[dict[str, Any], dict[str, JobTiming]]:
    """Run every job's tasks; returns each job's result and timing, by key.

    ``jobs``: key -> (progress label, generator, expected progress units). ``workers`` <= 1 runs the tasks in
    this process, one after another; more starts that many worker processes (new interpreters, not forks:
    torch and onnxruntime hold threads a fork would copy half-alive), one thread each. A task that raises
    stops the others (their processes are killed) and raises here.
    """
    scheduler = _Scheduler(jobs, on_progress)
    if workers <= 1:
        _run_here(scheduler)
    else:
        _run_workers(scheduler, workers)
    return (
        {key: job.result for key, job in scheduler.jobs.items()},
        {key: job.timing for key, job in scheduler.jobs.items()},
    )


def _run_here(scheduler: _Scheduler) -> None:
    while (item := scheduler.next_task()) is not None:
        uid, task = item
        start = time.perf_counter()
        result = task.fn(*task.args, lambda done, uid=uid: scheduler.progress(uid, done))
        scheduler.finish(uid, result, time.perf_counter() - start)


def _run_workers(scheduler: _Scheduler, workers: int) -> None:
    from multiprocessing.connection import Connection

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    conns: list[Connection] = []
    finished = False
    try:
        for _ in range(workers):
            ours, theirs = socket.socketpair()
            conns.append(Connection(ours.detach()))
            # a session of its own: Ctrl-C reaches this process only, which stops the workers itself
            command = [sys.executable, "-c", BOOT.format(__name__)]
            proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, env=env, pass_fds=[theirs.fileno()], start_new_session=True
            )
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps({"path": sys.path, "fd": theirs.fileno()}))
            proc.stdin.close()
            theirs.close()
        _drive(scheduler, conns)
        for conn in conns:
            conn.send(None)
        finished = True
    finally:
        for conn in conns:
            conn.close()
        for proc in procs:
            _stop(proc, finished)


def _stop(proc: subprocess.Popen[bytes], finished: bool) -> None:
    """Let a worker told to stop exit; kill one still at work (an error or Ctrl-C here)."""
    try:
        proc.wait(10.0 if finished else 0.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _drive(scheduler: _Scheduler, conns: list[Any]) -> None:
    """Keep every worker busy until every job is finished; a task's exception is raised here."""
    from multiprocessing.connection import wait

    idle, busy = list(conns), {}
    while not scheduler.finished:
        while idle and (item := scheduler.next_task()) is not None:
            conn = idle.pop()
            busy[conn] = item[0]
            conn.send((item[0], item[1].fn, item[1].args))
        if not busy:
            raise RuntimeError("verify's jobs wait for each other: no task to run")  # a bug, never a hang
        for conn in wait(list(busy)):
            try:
                kind, uid, payload = conn.recv()
            except (EOFError, OSError):
                raise RuntimeError(
                    "a verify worker process stopped (killed, out of memory, or it could not start: see above)"
                ) from None
            if kind == "progress":
                scheduler.progress(uid, payload)
                continue
            idle.append(conn)
            del busy[conn]
            if kind == "error":
                raise payload
            scheduler.finish(uid, *payload)


def plan_workers(threads: int, tasks: int) -> int:
    """Worker processes for ``tasks`` tasks: ``threads`` (0: one per CPU of this machine), at most one per task;
    1 (this process) where sockets cannot be handed to a child process (Windows)."""
    if os.name != "posix":
        return 1
    return max(1, min(threads or os.cpu_count() or 1, tasks))
