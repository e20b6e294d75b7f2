"""The SAM embedding cache: a folder of ``.npz`` files plus a small in-memory LRU.

Layout: ``<root>/<checkpoint identity>/<tile id>-<stamp>.npz`` where the stamp
hashes the display image's size and modification time, so a re-rendered tile
or another checkpoint never reuses a stale embedding. Files are written
atomically (temporary file, then rename) and computed under a per-file lock,
so several backend workers and the precompute job share one cache without
computing an embedding twice or reading a half-written file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_backend.sam import EMBEDDING_DTYPE, Embedding

LOCK_STRIPES = 64


@dataclass(frozen=True)
class CacheStats:
    """Counters of one process since it started, and what the folder holds."""

    memory_hits: int
    disk_hits: int
    computed: int
    files: int
    bytes: int

    @property
    def hit_rate(self) -> float | None:
        """Share of lookups answered without running the image encoder (None before the first)."""
        lookups = self.memory_hits + self.disk_hits + self.computed
        return None if lookups == 0 else (self.memory_hits + self.disk_hits) / lookups


class EmbeddingCache:
    """Embeddings of one checkpoint, on disk under ``root`` and in a memory LRU of ``memory_items``.

    Args:
        root: cache folder (shared by every process of the backend).
        identity: the checkpoint identity (:func:`ml_backend.sam.checkpoint_identity`).
        memory_items: embeddings kept in memory (about 2 MB each).
    """

    def __init__(self, root: Path, identity: str, memory_items: int = 32) -> None:
        self.folder = root / identity
        self.folder.mkdir(parents=True, exist_ok=True)
        self.memory_items = memory_items
        self._memory: OrderedDict[str, Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self._memory_hits = self._disk_hits = self._computed = 0

    def key(self, tile_id: str, image: Path) -> str:
        """Cache key of a tile's display image: tile id and a stamp of the file's size and mtime.

        Raises:
            FileNotFoundError: if the image is missing.
        """
        stat = image.stat()
        stamp = hashlib.blake2b(f"{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=6).hexdigest()
        return f"{tile_id}-{stamp}"

    def path(self, key: str) -> Path:
        """The file holding the embedding of ``key``."""
        return self.folder / f"{key}.npz"

    def contains(self, key: str) -> bool:
        """True if the embedding is in memory or on disk."""
        with self._lock:
            if key in self._memory:
                return True
        return self.path(key).is_file()

    def get(self, key: str) -> Embedding | None:
        """The cached embedding of ``key``, or None (counts a hit when found)."""
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                self._memory_hits += 1
                return self._memory[key]
        embedding = _read(self.path(key))
        if embedding is not None:
            with self._lock:
                self._disk_hits += 1
            self._remember(key, embedding)
        return embedding

    def get_or_compute(self, key: str, compute: Callable[[], Embedding]) -> Embedding:
        """The embedding of ``key``; computes and stores it on a miss, at most once across processes."""
        cached = self.get(key)
        if cached is not None:
            return cached
        path = self.path(key)
        with open(self._lock_file(key), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be computing it: wait, then read
            try:
                embedding = _read(path)
                if embedding is None:
                    embedding = compute()
                    _write(path, embedding)
                    with self._lock:
                        self._computed += 1
                else:
                    with self._lock:
                        self._disk_hits += 1
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._remember(key, embedding)
        return embedding

    def stats(self) -> CacheStats:
        """Hit counters of this process and the number and size of files in the folder."""
        files = size = 0
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if entry.name.endswith(".npz"):
                    files += 1
                    size += entry.stat().st_size
        with self._lock:
            return CacheStats(self._memory_hits, self._disk_hits, self._computed, files, size)

    def _lock_file(self, key: str) -> Path:
        """One of 64 lock files (keys are striped over them; locks are never deleted, so never raced)."""
        stripe = hashlib.blake2b(key.encode(), digest_size=1).digest()[0] % LOCK_STRIPES
        folder = self.folder / ".locks"
        folder.mkdir(exist_ok=True)
        return folder / f"{stripe:02d}.lock"

    def _remember(self, key: str, embedding: Embedding) -> None:
        with self._lock:
            self._memory[key] = embedding
            self._memory.move_to_end(key)
            while len(self._memory) > self.memory_items:
                self._memory.popitem(last=False)


def _write(path: Path, embedding: Embedding) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(temporary, "wb") as handle:
        np.savez(
            handle,
            features=embedding.features.astype(EMBEDDING_DTYPE),
            original_size=np.asarray(embedding.original_size, dtype=np.int64),
            input_size=np.asarray(embedding.input_size, dtype=np.int64),
        )
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _read(path: Path) -> Embedding | None:
    """The embedding stored at ``path``; None if absent or unreadable (it is then recomputed)."""
    try:
        with np.load(path) as data:
            height, width = (int(v) for v in data["original_size"])
            input_h, input_w = (int(v) for v in data["input_size"])
            return Embedding(data["features"], (height, width), (input_h, input_w))
    except (OSError, KeyError, ValueError):
        return None
