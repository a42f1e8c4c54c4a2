"""The Dask cluster a batch job runs on: a scheduler's address, or a local cluster on this machine.

No cluster code of our own: `distributed.LocalCluster` (worker processes, one thread each, the
embedded default) or `distributed.Client(address)` for a running cluster (`dask scheduler` /
`dask worker`, the Dask Kubernetes operator's `DaskCluster`, a Dask Gateway cluster: see the
README). Either way the job's code is the same; on a real cluster every worker needs this
package installed (the engine's image) and the job's input and output paths mounted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
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
    # the local cluster's own logs (worker start/stop) are noise at the terminal
    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with LocalCluster(
        n_workers=workers or default_workers(),
        threads_per_worker=1,
        processes=True,
        memory_limit=memory_limit,
        dashboard_address=":0",  # a free port: never collide with a dashboard already on 8787
    ) as cluster, Client(cluster) as client:
        yield client


def describe(client: Any) -> str:
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    return f"{client.scheduler.address} ({len(workers)} workers, {threads} threads)"
