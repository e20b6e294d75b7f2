"""Short-lived connections to the registry file for the trainer's small tables (throughput, agreement)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def connect(path: str | Path, schema: str) -> Iterator[sqlite3.Connection]:
    """A connection to the registry file, ``schema`` created if missing: one transaction, always closed."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.executescript(schema)
        with conn:
            yield conn
    finally:
        conn.close()
