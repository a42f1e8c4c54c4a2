"""Hot swap: the model serving now, and how a new bundle replaces it.

A reload loads and validates the new bundle off the event loop; only a bundle
that passes every check replaces the current one, in a single assignment, so a
batch always runs on one model. A bad bundle is refused with a log line and
the last good one keeps serving. Reloads come from SIGHUP, from `watch()`
(polling the manifest's stat, no extra dependency), or from a direct call.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from engine.errors import BundleError
from engine.models.bundle import MANIFEST

log = logging.getLogger(__name__)


class Servable(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def loaded_at(self) -> float: ...


S = TypeVar("S", bound=Servable)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path / MANIFEST)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ModelRegistry(Generic[S]):
    """Holds the current servable model; swaps it only for one that loaded cleanly."""

    def __init__(
        self,
        path: Path,
        loader: Callable[[Path], S],
        on_swap: Callable[[S], None] | None = None,
        on_outcome: Callable[[bool], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._loader = loader
        self._on_swap = on_swap
        self._on_outcome = on_outcome
        self._current: S | None = None
        self._lock = asyncio.Lock()
        self._seen = _signature(self.path)

    @property
    def current(self) -> S:
        if self._current is None:
            raise RuntimeError("no model loaded yet")
        return self._current

    def load_initial(self) -> S:
        """Load the configured bundle at start-up; a bad one is fatal here (nothing to fall back on)."""
        self._seen = _signature(self.path)
        self._install(self._loader(self.path))
        return self.current

    async def reload(self, path: Path | None = None) -> bool:
        """Load `path` (default: the configured bundle) and swap it in if valid; True on success."""
        target = Path(path) if path is not None else self.path
        async with self._lock:
            self._seen = _signature(target)
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, self._loader, target)
            except BundleError as exc:
                log.error("model reload refused, still serving %s: %s", self._describe(), exc)
                self._outcome(False)
                return False
            except Exception:  # noqa: BLE001 - a reload must never take the server down
                log.exception("model reload failed, still serving %s", self._describe())
                self._outcome(False)
                return False
            old = self._describe()
            self._install(new)
            if path is not None:
                self.path = target
            log.info("model reloaded: %s -> %s", old, self._describe())
            self._outcome(True)
            return True

    async def watch(self, interval_s: float) -> None:
        """Reload whenever the bundle's manifest changes; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if _signature(self.path) not in (self._seen, None):
                await self.reload()

    def _install(self, new: S) -> None:
        self._current = new
        if self._on_swap is not None:
            self._on_swap(new)

    def _outcome(self, ok: bool) -> None:
        if self._on_outcome is not None:
            self._on_outcome(ok)

    def _describe(self) -> str:
        cur = self._current
        return f"{cur.name} {cur.version}" if cur is not None else "nothing"
