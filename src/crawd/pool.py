"""Independent tasks in worker processes of one torch thread each, followed on one display in the parent.

On a CPU, runs side by side in processes of one thread each finish sooner than the same runs one
after another with all threads. :func:`run_tasks` starts ``jobs`` worker processes (spawned:
fresh interpreters, which CUDA also needs), sets each to one intra-op thread, hands them the
tasks in order and passes each result on as it arrives. A task says what it is doing with
:func:`report`; the parent shows one line per task (:class:`Board`). Workers print nothing:
their stdout (the Trainer's log lines) is dropped and the progress bars are off, so that
output does not interleave.

An error in a task stops the other workers and is raised in the parent with its type and
message (the worker's traceback is its cause). Ctrl-C stops the workers too, and a worker
whose parent is gone (killed) exits at once, so that no run goes on training on its own.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import datasets
import torch
from rich.console import Console
from rich.live import Live
from rich.table import Table
from tqdm import tqdm
from transformers.utils import logging as hf_logging

#: In a worker: the queue to the parent and the task running (see :func:`report`).
_messages: Any = None
_task = -1


def default_jobs() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Board:
    """One line per task: its name, what it is doing and for how long (a rich renderable)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.states = ["waiting"] * len(names)
        self.started: list[float | None] = [None] * len(names)

    def set(self, index: int, state: str) -> None:
        self.states[index] = state

    def start(self, index: int) -> None:
        self.started[index] = time.perf_counter()
        self.set(index, "starting")

    def finish(self, index: int) -> None:
        self.set(index, f"done in {time.perf_counter() - self.started[index]:.0f} s")
        self.started[index] = None

    def __rich__(self) -> Table:
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        for name, state, started in zip(self.names, self.states, self.started):
            table.add_row(name, state, "" if started is None else f"{time.perf_counter() - started:.0f} s")
        return table


class WorkerTraceback(Exception):
    """Where an error was raised in a worker: the cause of the error raised again in the parent."""


def report(state: str) -> None:
    """Show ``state`` on the parent's line of the task that calls this (nothing outside a worker)."""
    if _messages is not None:
        _messages.put(("state", _task, state))


def run_tasks(work: Callable[[Any, Any], Any], common: Any, tasks: dict[int, Any], jobs: int,
              done: Callable[[int, Any], None], board: Board, console: Console) -> None:
    """``work(common, task)`` for every task in ``jobs`` worker processes; ``done(index, result)`` as each
    finishes. ``work`` is a module-level function, ``common`` is sent once to each worker, and ``index``
    (a key of ``tasks``) is the task's line on ``board``, which is shown on ``console`` meanwhile."""
    context = multiprocessing.get_context("spawn")
    inbox, messages = context.Queue(), context.Queue()
    for item in tasks.items():
        inbox.put(item)
    for _ in range(jobs):
        inbox.put(None)
    workers = [context.Process(target=_serve, args=(work, common, inbox, messages)) for _ in range(jobs)]
    for worker in workers:
        worker.start()
    left, running = set(tasks), {}  # running: worker pid -> task
    try:
        with Live(board, console=console, refresh_per_second=2):
            while left:
                kind, index, payload = _next_message(messages, workers, running, board)
                if kind == "start":
                    running[payload] = index
                    board.start(index)
                elif kind == "state":
                    board.set(index, payload)
                elif kind == "failed":
                    board.set(index, "failed")
                    error, trace = payload
                    raise error from WorkerTraceback(trace)
                else:
                    left.discard(index)
                    board.finish(index)
                    done(index, payload)
    finally:
        if not console.is_terminal:
            console.line()  # rich leaves the last line of the board open there
        for worker in workers:
            if left:  # an error or an interrupt: the unfinished tasks are dropped
                worker.terminate()
            worker.join()


def _next_message(messages: Any, workers: list[Any], running: dict[int, int], board: Board) -> tuple[str, int, Any]:
    """The next message from the workers. A worker that died meanwhile (killed, out of memory) is an error, and so
    are workers all gone with no message left (a result that could not be pickled)."""
    while True:
        gone = all(worker.exitcode is not None for worker in workers)  # what they sent before is read below
        try:
            return messages.get(timeout=0.5)
        except queue.Empty:
            for worker in workers:
                if worker.exitcode not in (None, 0):
                    task = board.names[running[worker.pid]] if worker.pid in running else "no task"
                    raise RuntimeError(f"a worker process ended with exit code {worker.exitcode} ({task})") from None
            if gone:
                raise RuntimeError("the worker processes ended before every task was done") from None


def _serve(work: Callable[[Any, Any], Any], common: Any, inbox: Any, messages: Any) -> None:
    """A worker: one torch thread, no output, Ctrl-C left to the parent; runs tasks until told to stop."""
    global _messages, _task
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    torch.set_num_threads(1)
    sys.stdout = open(os.devnull, "w")  # kept open for the life of the process
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    tqdm.set_lock(threading.RLock())  # not tqdm's default process lock, left behind by a worker stopped mid-task
    _messages = messages
    while (item := inbox.get()) is not None:
        _task, task = item
        messages.put(("start", _task, os.getpid()))
        try:
            result = work(common, task)
        except BaseException as error:  # whatever it is, the parent raises it
            messages.put(("failed", _task, (_sendable(error), traceback.format_exc())))
            return
        messages.put(("done", _task, result))


def _sendable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _exit_with_parent() -> None:
    """Exit the worker as soon as its parent is gone."""
    multiprocessing.connection.wait([multiprocessing.parent_process().sentinel])
    os._exit(1)
