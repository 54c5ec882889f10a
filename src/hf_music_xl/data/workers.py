"""Run tasks in worker processes that may die or hang, and go on: the corpus build's readers.

A reader runs C++ (symusic) and music21 on files from anywhere: a segfault or the OOM killer takes its process
down, an endless loop holds it forever. ``map_in_workers`` runs every task in a child process (even with one
worker: the build must outlive its reader), gives each task a time limit, and turns a worker's death or a task
past its limit into that task's failure (``on_failure(job, reason)`` makes its result); the worker is replaced and
the build goes on. This is a small pool managed here rather than ``multiprocessing.Pool``, which replaces a dead
worker but never returns the lost task's result (the build waited forever), and has no time limit per task.

Results come back in the order of the jobs, and only a few jobs are read ahead (a source may stream millions).
Workers die with the build: each asks the kernel for SIGKILL when its parent dies (Linux ``PR_SET_PDEATHSIG``),
and the pool stops them when it ends, whether it finished, failed or was closed early.
"""

from __future__ import annotations

import collections
import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

CHUNK = 8  # jobs a message carries: one round trip through the pipe per 8 files, not per file (~1 ms each)
CHUNKS_AHEAD = 2  # chunks in a worker's pipe: the next one waits there while it reads the current one
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def fork_context():
    """fork starts workers instantly with music21 already imported (and what the caller set up, so tests can
    replace a reader); elsewhere the platform's default."""
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)


@dataclass
class Worker:
    """One worker process, its end of the pipe, the chunks it was sent (oldest, the one it reads, first), and what
    it is reading now: ``progress`` is shared memory it writes before each job, (index or -1 between chunks,
    ``time.monotonic()`` when the job began), so a death or a time limit is pinned on one job without a message."""

    process: multiprocessing.Process
    connection: Connection
    progress: ctypes.Array
    chunks: collections.deque = field(default_factory=collections.deque)  # lists of (index, job)

    def current(self) -> int | None:
        """Index of the job it reads now, if any."""
        index = int(self.progress[0])
        return index if index >= 0 else None


def die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux); exit at once if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the call: no signal will come
        os._exit(1)


def serve(connection: Connection, function: Callable, progress, parent: int, inherited: list[Connection]) -> None:
    """A worker's life: read chunks of (index, job) and answer each chunk with (index, True, result) or (index,
    False, reason) per job, until the parent closes the pipe."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent handles it
    for other in inherited:  # the other workers' pipes, copied by fork: a worker must see its own pipe close
        other.close()
    while True:
        try:
            chunk = connection.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        answers = []
        for index, job in chunk:
            progress[1] = time.monotonic()  # the time first: the parent reads the index, then the time
            progress[0] = index
            try:
                answers.append((index, True, function(job)))
            except Exception as error:  # the function's own failure: the job's, not the worker's
                answers.append((index, False, f"{type(error).__name__}: {error}"))
        connection.send(answers)  # a death while sending is pinned on the last job (its result may be the cause)
        progress[0] = -1


def death_reason(process: multiprocessing.Process) -> str:
    """How a worker process ended, in words: 'died of SIGSEGV (signal 11)', 'exited with status 1'."""
    process.join(5)  # its pipe closes as it dies: the exit status follows at once
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"died of {name} (signal {-code})"
    return f"exited with status {code}"


def map_in_workers(
    function: Callable,
    jobs: Iterable,
    num_proc: int,
    time_limit: float | None,
    on_failure: Callable[[object, str], object],
    chunk: int = CHUNK,
) -> Iterator:
    """``function(job)`` of each job, in order, computed in ``num_proc`` worker processes (at least one), ``chunk``
    jobs a message. A job whose worker dies, or that runs past ``time_limit`` seconds (None: no limit), gives
    ``on_failure(job, reason)`` instead, with the reason in words; so does an exception ``function`` raises. The
    other jobs the worker held are read again by a new one."""
    pool = Pool(function, jobs, max(1, num_proc), time_limit, on_failure, max(1, chunk))
    try:
        yield from pool.results()
    finally:
        pool.close()


class Pool:
    """The workers of one ``map_in_workers`` call and the state of its jobs."""

    def __init__(self, function, jobs, num_proc: int, time_limit: float | None, on_failure, chunk: int):
        self.function, self.time_limit, self.on_failure, self.chunk = function, time_limit, on_failure, chunk
        self.context = fork_context()
        self.jobs = iter(jobs)
        self.retry: collections.deque = collections.deque()  # (index, job) a dead worker held, to read again
        self.done: dict[int, object] = {}  # results that wait for an earlier one
        self.taken = self.given = 0  # jobs taken from ``jobs``; results given back
        self.ahead = num_proc * (CHUNKS_AHEAD + 2) * chunk  # jobs taken and not given back, at most
        self.exhausted = False
        self.workers: list[Worker] = []
        try:
            for _ in range(num_proc):
                self.workers.append(self.start_worker())
        except BaseException:  # fork failed (no memory, too many processes): stop the ones started
            self.close()
            raise

    def results(self) -> Iterator:
        while True:
            self.dispatch()
            while self.given in self.done:
                yield self.done.pop(self.given)
                self.given += 1
            busy = [worker for worker in self.workers if worker.chunks]
            if busy:
                self.collect(busy)
            elif self.exhausted and not self.retry and self.given == self.taken:
                return

    def start_worker(self) -> Worker:
        parent_end, child_end = self.context.Pipe()
        progress = self.context.RawArray(ctypes.c_double, [-1.0, 0.0])
        inherited = [worker.connection for worker in self.workers]
        args = (child_end, self.function, progress, os.getpid(), inherited)
        process = self.context.Process(target=serve, args=args, daemon=True, name="reader")
        process.start()
        child_end.close()
        return Worker(process, parent_end, progress)

    def next_task(self) -> tuple[int, object] | None:
        if self.retry:
            return self.retry.popleft()
        if self.exhausted or self.taken - self.given >= self.ahead:
            return None
        job = next(self.jobs, StopIteration)
        if job is StopIteration:
            self.exhausted = True
            return None
        self.taken += 1
        return self.taken - 1, job

    def dispatch(self) -> None:
        """Keep ``CHUNKS_AHEAD`` chunks in every worker's pipe, the least loaded first."""
        for slot in sorted(range(len(self.workers)), key=lambda slot: len(self.workers[slot].chunks)):
            while len(self.workers[slot].chunks) < CHUNKS_AHEAD:
                tasks = []
                while len(tasks) < self.chunk and (task := self.next_task()) is not None:
                    tasks.append(task)
                if not tasks:
                    return
                self.send(self.workers[slot], tasks)

    def send(self, worker: Worker, tasks: list) -> None:
        worker.chunks.append(tasks)
        try:
            worker.connection.send(tasks)
        except OSError:  # it died: of the chunk it was reading, or idle (then the new chunk just moves on)
            if len(worker.chunks) == 1:
                self.retry.extendleft(reversed(worker.chunks.pop()))
            self.replace(worker, f"WorkerDied: the reading process {death_reason(worker.process)}")

    def collect(self, busy: list[Worker]) -> None:
        """Wait for an answer, a death or the nearest time limit, and deal with what came."""
        timeout = None
        if self.time_limit is not None:
            timeout = max(0.0, min(self.started(worker) for worker in busy) + self.time_limit - time.monotonic())
        ready = set(wait([w.connection for w in busy] + [w.process.sentinel for w in busy], timeout))
        for worker in busy:
            alive = self.receive(worker) if worker.connection in ready else True
            if not alive or (worker.process.sentinel in ready and not worker.process.is_alive()):
                self.receive(worker)  # answers sent just before it died still count
                self.replace(worker, f"WorkerDied: the reading process {death_reason(worker.process)}")
            elif self.time_limit is not None and time.monotonic() - self.started(worker) > self.time_limit:
                limit = f"{self.time_limit:g} s"
                self.replace(worker, f"TimeLimit: reading took longer than the limit of {limit}; stopped")

    def started(self, worker: Worker) -> float:
        """When the job the worker reads began (now, between two chunks)."""
        return worker.progress[1] if worker.current() is not None else time.monotonic()

    def receive(self, worker: Worker) -> bool:
        """Take every answer waiting in the worker's pipe; False if the pipe broke (the worker died)."""
        try:
            while worker.chunks and worker.connection.poll():
                answers = worker.connection.recv()
                jobs = dict(worker.chunks.popleft())
                for index, ok, value in answers:
                    self.done[index] = value if ok else self.on_failure(jobs[index], value)
        except (EOFError, OSError):
            return False
        return True

    def replace(self, worker: Worker, reason: str) -> None:
        """The job the worker reads fails with ``reason``; the others it holds are read again; a new worker."""
        held = [task for chunk in worker.chunks for task in chunk]
        current = worker.current()
        if current is None and held:  # it died before starting a job: taking in its chunk (the first job's)
            current = held[0][0]
        for index, job in held:  # a job it answered before dying is not among them: then none is to blame
            if index == current:
                self.done[index] = self.on_failure(job, reason)
        self.retry.extendleft(reversed([task for task in held if task[0] != current]))
        worker.chunks.clear()
        stop(worker, kill=True)
        self.workers[self.workers.index(worker)] = self.start_worker()

    def close(self) -> None:
        for worker in self.workers:
            stop(worker, kill=bool(worker.chunks))


def stop(worker: Worker, kill: bool) -> None:
    """End a worker: an idle one is asked to stop and closes; a busy or stuck one (``kill``) is killed."""
    if not kill:
        try:
            worker.connection.send(None)
        except OSError:  # already gone
            kill = True
    worker.connection.close()
    if not kill:
        worker.process.join(2)  # it returns as soon as it reads the None
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join()
