"""Done-records: a chunk counts as written only once its record exists, stored after it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zarr.buffer import default_buffer_prototype
from zarr.storage import WrapperStore

from .marks import DONE

if TYPE_CHECKING:
    from zarr.abc.store import Store
    from zarr.core.buffer import Buffer


def is_chunk(key: str) -> bool:
    """Every key of a Zarr v3 store but the metadata documents (``zarr.json``) is chunk data."""
    return key.rsplit("/", 1)[-1] != "zarr.json"


class DoneRecords(WrapperStore):
    """A Zarr store that writes ``DONE/<key>`` after each chunk ``key`` is stored (or deleted:
    a chunk equal to the fill value) and skips the chunks in ``done``; metadata passes through."""

    def __init__(self, store: Store, done: frozenset = frozenset()) -> None:
        super().__init__(store)
        self._done = done

    def _with_store(self, store):
        return type(self)(store, self._done)

    async def _record(self, key):
        await self._store.set(f"{DONE}/{key}", default_buffer_prototype().buffer.from_bytes(b""))

    async def set(self, key: str, value: Buffer) -> None:
        if not is_chunk(key):
            await self._store.set(key, value)
        elif key not in self._done:
            await self._store.set(key, value)
            await self._record(key)

    async def delete(self, key: str) -> None:
        if not is_chunk(key):
            await self._store.delete(key)
        elif key not in self._done:
            await self._store.delete(key)
            await self._record(key)

    async def _set_many(self, values):
        for key, value in values:
            await self.set(key, value)
