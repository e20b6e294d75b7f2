"""Progress of long jobs: a protocol every layer reports to (the CLI shows a progress bar)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of long steps (the CLI shows a progress bar)."""

    def start(self, description: str, total: int) -> None:
        """A step of ``total`` units begins."""

    def advance(self, units: int) -> None:
        """``units`` more are done."""


class SilentProgress:
    """A progress receiver that shows nothing."""

    def start(self, description: str, total: int) -> None:
        """Nothing to show."""

    def advance(self, units: int) -> None:
        """Nothing to show."""
