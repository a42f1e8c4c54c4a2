"""Compiled kernels: the one decorator, and where their machine code is cached.

Every numba kernel of the engine (request decoding, validation, features, the
response and reasons encoders, TreeSHAP, score metrics) is declared with
`@compiled`: compiled on first use, GIL released, numpy semantics for float
errors (x / 0 is inf, not an exception), and cached on disk so that a start
finds it compiled.

The cache is keyed so that stale machine code can never run. numba checks only
the source file of the function itself; a kernel that calls a kernel of another
module, or reads a constant from one, would keep its old machine code when that
other file changes. So the cache directory is one per *key*: a hash of every
source file of the `engine` package, of the numba, llvmlite, NumPy and Python
versions, and of the CPU target. Any change to any of them is a new, empty
directory, and every kernel compiles anew.

Where the cache lives (`cache_dir()`):

- `ENGINE_KERNEL_CACHE` (or else `NUMBA_CACHE_DIR`) names a writable base
  directory; by default `$XDG_CACHE_HOME/tradescore/kernels` (`~/.cache/...`),
  or `/tmp/tradescore-kernels` where there is no home to write to;
- the key's directory is `<base>/<key>`;
- `engine compile --ship` writes the cache into the installed package
  (`engine/_kernels/<key>`): the container image does this when it is built, for
  the CPU target `NUMBA_CPU_NAME=generic` that every x86-64 node runs. At start,
  a shipped cache for the current key is copied to the writable directory
  (numba writes there whatever it compiles later), so a new pod compiles nothing.

`engine serve` logs whether it found the kernels compiled, and how long the
start took (`engine.server`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, cast

import llvmlite  # type: ignore[import-untyped]
import numba
import numpy as np

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
#: the cache `engine compile --ship` writes into the installed package
SHIPPED = PACKAGE / "_kernels"
#: numba's index files, one per compiled function
INDEX_SUFFIX = ".nbi"
#: an integer inside compiled code: numba's int64 and Python's int are one type there
Int: TypeAlias = int | np.int64

F = TypeVar("F", bound=Callable[..., Any])


def cpu_target() -> str:
    """The CPU numba compiles for: NUMBA_CPU_NAME (e.g. "generic") and NUMBA_CPU_FEATURES, else the host's."""
    name = os.environ.get("NUMBA_CPU_NAME", "")
    features = os.environ.get("NUMBA_CPU_FEATURES", "")
    if name:
        return f"{name}:{features}"
    from llvmlite import binding

    return f"host:{binding.get_host_cpu_name()}:{binding.get_host_cpu_features().flatten()}"


def cache_key(package: Path = PACKAGE) -> str:
    """A hash of every source file of the package, the compiler's versions and the CPU target."""
    h = hashlib.sha256()
    versions = (numba.__version__, llvmlite.__version__, np.__version__, platform.python_version())
    for part in (*versions, cpu_target()):
        h.update(part.encode() + b"\0")
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


def _writable_base() -> Path:
    for var in ("ENGINE_KERNEL_CACHE", "NUMBA_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    home = os.environ.get("XDG_CACHE_HOME") or (
        str(Path.home() / ".cache") if os.environ.get("HOME", "/") not in ("", "/", "/nonexistent") else ""
    )
    return Path(home) / "tradescore" / "kernels" if home else Path("/tmp/tradescore-kernels")


def has_kernels(directory: Path) -> bool:
    """Whether `directory` holds compiled kernels (numba index files)."""
    return directory.is_dir() and any(directory.rglob("*" + INDEX_SUFFIX))


def _prepare() -> tuple[Path, str]:
    """The writable cache directory of the current key, seeded from a shipped cache; how it was found."""
    key = cache_key()
    directory = _writable_base() / key
    shipped = SHIPPED / key
    if has_kernels(directory):
        return directory, "cached"
    if has_kernels(shipped):
        try:
            shutil.copytree(shipped, directory, dirs_exist_ok=True)
            return directory, "shipped"
        except OSError as exc:  # a read-only or full disk: read them where they are shipped
            log.warning("cannot copy the shipped kernels to %s (%s)", directory, exc)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("no writable kernel cache at %s (%s): kernels compile at every start", directory, exc)
    return directory, "empty"


#: the kernel cache of this process, and whether it held compiled kernels when the process started
#: ("cached": from an earlier run; "shipped": copied from the installed package; "empty": none)
CACHE_DIR, CACHE_STATE = _prepare()
_config: Any = numba.core.config  # its settings are module globals the stubs do not list
_config.CACHE_DIR = str(CACHE_DIR)  # read by each kernel's cache locator

#: every kernel declared with @compiled, in declaration order (`engine compile`, tests)
KERNELS: list[Any] = []

_njit = numba.njit(cache=True, nogil=True, error_model="numpy")


def compiled(fn: F) -> F:
    """Compile `fn` with the engine's options (cached on disk, GIL released, numpy float errors)."""
    kernel = _njit(fn)
    KERNELS.append(kernel)
    return cast(F, kernel)


def compile_counts() -> tuple[int, int]:
    """(loaded from the cache, compiled in this process) over every kernel signature so far."""
    hits = sum(sum(k.stats.cache_hits.values()) for k in KERNELS)
    misses = sum(sum(k.stats.cache_misses.values()) for k in KERNELS)
    return hits, misses


def ship(into: Path = SHIPPED) -> Path:
    """Copy this process's kernel cache (compiled by now) into `into/<key>`; the directory written."""
    target = into / CACHE_DIR.name
    if target.resolve() != CACHE_DIR.resolve():
        shutil.copytree(CACHE_DIR, target, dirs_exist_ok=True)
    return target


def describe() -> str:
    target = os.environ.get("NUMBA_CPU_NAME") or "this host's CPU"
    return f"kernel cache {CACHE_DIR} ({CACHE_STATE}; numba {numba.__version__}, compiled for {target})"
