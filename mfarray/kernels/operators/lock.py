"""Exclusive creation of a Zarr kernel store: one writer at a time.

A build holds ``<path>.lock``, created atomically (``O_CREAT | O_EXCL``) with the owner's pid,
host and kernel fingerprint, for as long as it writes blocks, so two processes building one
path cannot interleave blocks of two kernels.  A second writer that finds a live lock gets
:class:`KernelStoreLockedError` naming the path and the lock; a stale lock (its pid is gone
on this host) is taken over with a warning.  Local paths only.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zarr.storage import StoreLike

LOCK_SUFFIX = ".lock"
LOCK_GRACE_S = 30.0  # an unreadable lock younger than this is being written: live


class KernelStoreLockedError(RuntimeError):
    """Another live process (or thread) is building this kernel store."""


def _read_lock(lock):
    try:
        with open(lock, encoding="utf-8") as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True  # exists (another user's) or unknowable: assume alive
    return True


def _stale(owner, lock) -> bool:
    """A lock whose owner is gone: its pid no longer alive on this host, or unreadable for
    longer than :data:`LOCK_GRACE_S`.  A lock from another host is never stale (its pid cannot
    be checked from here)."""
    if owner is None:
        try:
            return time.time() - os.path.getmtime(lock) > LOCK_GRACE_S
        except OSError:
            return False
    if owner.get("host") not in (None, socket.gethostname()):
        return False
    return "pid" in owner and not _pid_alive(owner["pid"])


def _lock_path(path):
    """``<path>.lock`` for a local path; None for a store object or a URL (not locked)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    p = os.fspath(path)
    if isinstance(p, bytes) or "://" in p:
        return None
    return p.rstrip("/" + os.sep) + LOCK_SUFFIX


@contextmanager
def exclusive(path: StoreLike | os.PathLike, kernel_fp: str) -> Iterator[None]:
    """Hold ``<path>.lock`` (created atomically, ``O_CREAT | O_EXCL``) while building: a second
    writer finding a live lock raises :class:`KernelStoreLockedError` naming the path and the
    lock; a stale one (owner pid gone) is taken over with a warning."""
    lock = _lock_path(path)
    if lock is None:
        yield
        return
    parent = os.path.dirname(lock)
    if parent:
        os.makedirs(parent, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "nonce": uuid.uuid4().hex,
          "kernel_code_sha256": kernel_fp, "since": time.time()}
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(lock)
            if not _stale(owner, lock):
                who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "a process starting up"
                raise KernelStoreLockedError(
                    f"kernel store {path!s} is being built by another writer ({who}; lock file {lock}); "
                    f"wait for it to finish, or, if that process is gone, remove {lock}"
                ) from None
            # take the stale lock over atomically: rename it aside, check it is the one we judged
            aside = f"{lock}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(lock, aside)
            except FileNotFoundError:
                continue  # someone else removed it first: try again
            taken = _read_lock(aside)
            if taken != owner:  # we moved a fresh lock of another writer: put it back
                try:
                    os.link(aside, lock)
                except FileExistsError:
                    pass
                os.unlink(aside)
                raise KernelStoreLockedError(
                    f"kernel store {path!s} is being built by another writer (lock file {lock})"
                ) from None
            os.unlink(aside)
            warnings.warn(
                f"took over a stale lock {lock} of kernel store {path!s} (its owner, "
                f"{'pid ' + str(owner.get('pid')) if owner else 'unknown'}, is gone)",
                UserWarning, stacklevel=4,
            )
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    else:
        raise KernelStoreLockedError(f"could not take the lock {lock} of kernel store {path!s}")
    try:
        yield
    finally:
        if (_read_lock(lock) or {}).get("nonce") == me["nonce"]:
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass
