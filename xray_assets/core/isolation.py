"""Decoders of outside bytes run here: in worker processes that a crash, a hang or a runaway
allocation can take down without taking the caller (the web app, a conversion shard) with them.

`IsolatedPool` is Pebble's process pool with what a decoder needs around it:
- spawned workers (a fork of a threaded server or of a process that used OpenCV's threads can
  deadlock), each replaced after `max_tasks` tasks so memory a decoder kept goes back to the system;
- an address-space cap per worker (`memory_mb`, RLIMIT_AS): an allocation past it is a MemoryError
  in the worker, not the machine's OOM killer choosing a victim;
- a timeout per task: a decoder still busy after `timeout_s` has its worker killed;
- `failure_reason` turns each of those ends into one sentence for an error or a quarantine row.
At most `workers` tasks decode at once: that is the cap on concurrent decodes.
"""

from __future__ import annotations

import multiprocessing
import resource
import signal
from concurrent.futures import Future, TimeoutError
from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeLimits:
    """How much an image may declare and what decoding it may cost (resolved once, in config)."""

    max_megapixels: float = 50.0
    workers: int = 2
    timeout_s: float = 60.0
    memory_mb: int = 3072
    max_tasks: int = 50


def _cap_memory(memory_mb: int) -> None:
    if memory_mb and memory_mb > 0:
        limit = int(memory_mb) * 1024 * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    # one thread per decode: the pool's size is the parallelism
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:
        pass


class IsolatedPool:
    def __init__(self, limits: DecodeLimits, workers: int | None = None):
        from pebble import ProcessPool

        self.limits = limits
        self.workers = max(1, workers or limits.workers)
        self._pool = ProcessPool(
            max_workers=self.workers,
            max_tasks=limits.max_tasks,
            initializer=_cap_memory,
            initargs=(limits.memory_mb,),
            context=multiprocessing.get_context("spawn"),
        )

    def submit(self, fn, *args) -> Future:
        return self._pool.schedule(fn, args=args, timeout=self.limits.timeout_s)

    def close(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=10)

    def __enter__(self) -> "IsolatedPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def failure_reason(exc: BaseException, limits: DecodeLimits) -> str:
    """One sentence for a task that did not return: crash, timeout, memory, or the error it raised."""
    from pebble import ProcessExpired

    if isinstance(exc, ProcessExpired):
        code = exc.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the decoder crashed ({name}); its worker was replaced"
        return (
            f"the decoder's process ended unexpectedly (exit code {code}); its worker was replaced"
        )
    if isinstance(exc, TimeoutError):
        return f"decoding took longer than {limits.timeout_s:g} s and was stopped"
    if isinstance(exc, MemoryError):
        return f"decoding needed more than the {limits.memory_mb} MB a decoder may use"
    return f"{exc.__class__.__name__}: {exc}"
