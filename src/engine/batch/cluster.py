"""The Dask cluster a batch job runs on: a scheduler's address, or a local cluster on this machine.

No cluster code of our own: `distributed.LocalCluster` (worker processes, one thread each, the
embedded default) or `distributed.Client(address)` for a running cluster (`dask scheduler` /
`dask worker`, the Dask Kubernetes operator's `DaskCluster`, a Dask Gateway cluster: see
docs/batch.md). Either way the job's code is the same; on a real cluster every worker needs this
package installed (the engine's image) and the job's input and output paths mounted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from engine.batch.errors import UsageError


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@contextlib.contextmanager
def connect(scheduler: str | None, workers: int | None = None, memory_limit: str = "auto") -> Iterator[Any]:
    """A `distributed.Client`: to `scheduler` (tcp://HOST:8786, tls://...), else to a local cluster
    of `workers` processes (default: one per core) that is stopped on exit."""
    from distributed import Client, LocalCluster

    if scheduler:
        if "://" not in scheduler:
            raise UsageError(f"--scheduler {scheduler!r}: give an address such as tcp://HOST:8786")
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise UsageError(f"--scheduler {scheduler}: cannot reach the scheduler: {exc}") from exc
        try:
            yield client
        finally:
            client.close()
        return
    # the local cluster's own logs (worker start and stop, shuffle bookkeeping, a task's error, which
    # comes back to the client with its message anyway) are noise at the terminal
    with (
        LocalCluster(
            n_workers=workers or default_workers(),
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=":0",  # a free port: never collide with a dashboard already on 8787
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def describe(client: Any) -> str:
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    return f"{client.scheduler.address} ({len(workers)} workers, {threads} threads)"


def run_tasks(
    client: Any, tasks: list[Any], what: str, log: Callable[[str], None], progress: Callable[[Any], str]
) -> list[Any]:
    """Compute Dask `tasks` on `client`; log progress at most every 2 s; results in task order.

    `progress(result)` folds one finished task into the caller's running totals and returns the
    text to show. On the first failure the others are cancelled and its error is raised (errors
    raised in a worker come back with their type and message).
    """
    import time

    from distributed import as_completed

    futures = client.compute(tasks)
    order = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    started = last = time.perf_counter()
    done = 0
    try:
        for future in as_completed(futures):
            result = future.result()
            results[order[future.key]] = result
            done += 1
            text = progress(result)
            now = time.perf_counter()
            if now - last >= 2.0 or done == len(futures):
                last = now
                log(f"{what}: {done}/{len(futures)} partitions, {text}, {now - started:.1f} s")
    except BaseException:
        client.cancel(futures)
        raise
    return results
