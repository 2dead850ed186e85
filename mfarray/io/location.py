"""Where a store lives: a local path or an fsspec URL (``memory://``, ``s3://``, ``file://`` ...).

A :class:`Location` answers the few questions the store rules ask -- does anything exist
there, is it a file, which files lie under it -- and gives the Zarr store object to read or
write it.  Local paths (``file://`` URLs included) use :mod:`os`: a write never follows a
symlink at the path itself (:func:`link_target`), a read does (:func:`followed`); other URLs
use the fsspec file system of their protocol.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zarr.storage import FsspecStore, LocalStore


@dataclass(frozen=True)
class Location:
    """``text``: the path or URL as given (for messages); ``fs``: the fsspec file system of a
    URL, None for a local path; ``root``: the path within ``fs`` (absolute on disk)."""

    text: str
    fs: Any
    root: str


def is_url(path: object) -> bool:
    """A string with a protocol (``proto://...``) is an fsspec URL; anything else a local path."""
    return isinstance(path, str) and "://" in path


def locate(path: str | os.PathLike) -> Location:
    """The :class:`Location` of a local path (str or os.PathLike) or an fsspec URL."""
    if is_url(path):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        fs, root = fsspec.core.url_to_fs(path)
        if isinstance(fs, LocalFileSystem):  # file://: a local path, with its rules (and its LocalStore)
            return Location(path, None, os.path.abspath(root))
        return Location(path, fs, root.rstrip("/") or "/")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, an os.PathLike or an fsspec URL; got {type(path).__name__}")
    text = os.fspath(path)
    return Location(text, None, os.path.abspath(text))  # a lazy read must not depend on the cwd


def exists(loc: Location) -> bool:
    """Anything at ``loc`` (a dangling symlink counts)."""
    return os.path.lexists(loc.root) if loc.fs is None else loc.fs.exists(loc.root)


def link_target(loc: Location) -> str | None:
    """The target of a local symlink at ``loc`` (absolute), None when it is not one."""
    if loc.fs is None and os.path.islink(loc.root):
        return os.path.realpath(loc.root)
    return None


def followed(loc: Location) -> Location:
    """``loc`` with a local symlink followed to its target: where a read looks."""
    target = link_target(loc)
    return loc if target is None else Location(loc.text, None, target)


def is_file(loc: Location) -> bool:
    """Something at ``loc`` that is not a directory."""
    if loc.fs is None:
        return os.path.lexists(loc.root) and not (os.path.isdir(loc.root) and not os.path.islink(loc.root))
    return loc.fs.isfile(loc.root)


def is_empty(loc: Location) -> bool:
    """A directory without entries (for a URL: nothing stored under it)."""
    if loc.fs is None:
        with os.scandir(loc.root) as entries:
            return next(entries, None) is None
    return not loc.fs.find(loc.root)


def files(loc: Location, under: str = "") -> list[str]:
    """The files under the directory ``loc`` (or its subdirectory ``under``), as
    ``/``-separated paths relative to that directory."""
    root = loc.root if not under else (os.path.join(loc.root, *under.split("/")) if loc.fs is None
                                       else f"{loc.root}/{under}")
    if loc.fs is None:
        out = []
        for top, dirs, names in os.walk(root):
            rel = os.path.relpath(top, root)
            prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            out += [prefix + n for n in names]
            out += [prefix + d for d in dirs if os.path.islink(os.path.join(top, d))]  # not followed
        return sorted(out)
    return sorted(f[len(root) + 1:] for f in loc.fs.find(root)) if loc.fs.exists(root) else []


def has_file(loc: Location, rel: str) -> bool:
    """A file ``rel`` (``/``-separated) under ``loc``."""
    if loc.fs is None:
        return os.path.isfile(os.path.join(loc.root, *rel.split("/")))
    return loc.fs.isfile(f"{loc.root}/{rel}")


def remove(loc: Location, rels: Iterable[str]) -> None:
    """Remove the files or directory trees ``rels`` (relative, ``/``-separated) under ``loc``;
    missing ones are skipped."""
    for rel in rels:
        if loc.fs is None:
            p = os.path.join(loc.root, *rel.split("/"))
            if os.path.isdir(p) and not os.path.islink(p):
                _remove_tree(p)
            elif os.path.lexists(p):
                os.unlink(p)
        elif loc.fs.exists(f"{loc.root}/{rel}"):
            loc.fs.rm(f"{loc.root}/{rel}", recursive=True)


def _remove_tree(top: str) -> None:
    """Remove the local directory tree ``top``, each folder's zarr.json after its other files: a
    kill at any moment leaves array folders that still say what they are, whose chunks a later
    overwrite recognises as mfarray's (:func:`~mfarray.io.marks.foreign_files`), not the user's."""
    for folder, dirs, names in os.walk(top, topdown=False):
        for name in sorted(names, key=lambda n: n == "zarr.json"):  # zarr.json last
            os.unlink(os.path.join(folder, name))
        for d in dirs:
            p = os.path.join(folder, d)
            if os.path.islink(p):
                os.unlink(p)
            else:
                os.rmdir(p)
    os.rmdir(top)


def clear(loc: Location, keep: Iterable[str] = ()) -> None:
    """Remove everything under the directory ``loc`` but its entries named in ``keep``,
    keeping a local directory itself."""
    keep = set(keep)
    if loc.fs is None:
        remove(loc, [n for n in os.listdir(loc.root) if n not in keep])
    elif keep:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in loc.fs.ls(loc.root, detail=False)]
        remove(loc, [n for n in names if n not in keep])
    elif loc.fs.exists(loc.root):
        loc.fs.rm(loc.root, recursive=True)


def zarr_store(loc: Location, read_only: bool = False) -> LocalStore | FsspecStore:
    """The Zarr store at ``loc``: a LocalStore, or an FsspecStore for a URL."""
    from zarr.storage import FsspecStore, LocalStore

    if loc.fs is None:
        return LocalStore(loc.root, read_only=read_only)
    return FsspecStore.from_url(loc.text, read_only=read_only)
