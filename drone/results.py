"""What the drone keeps of the gateway's answers: latency statistics and the results file."""

from __future__ import annotations

import json
from array import array
from collections import deque
from pathlib import Path
from typing import IO, Any

from dronedepth.errors import ConfigError
from dronedepth.stats import percentile

__all__ = ["LatencyStats", "ResultsWriter"]


class LatencyStats:
    """Glass-to-result latencies in milliseconds: every sample for the summary, the last ``window`` for live status."""

    def __init__(self, window: int = 300) -> None:
        self._all: array[float] = array("d")
        self._recent: deque[float] = deque(maxlen=window)

    def add(self, milliseconds: float) -> None:
        self._all.append(milliseconds)
        self._recent.append(milliseconds)

    def __len__(self) -> int:
        return len(self._all)

    def overall(self, q: float) -> float | None:
        """The ``q``-th percentile (:func:`dronedepth.stats.percentile`) of every sample; None before the first."""
        return percentile(self._all, q) if self._all else None

    def recent(self, q: float) -> float | None:
        """The ``q``-th percentile of the last ``window`` samples; None before the first."""
        return percentile(self._recent, q) if self._recent else None

    @property
    def maximum(self) -> float | None:
        return max(self._all) if self._all else None


class ResultsWriter:
    """One JSON object per line, flushed per line so a crash loses at most the line being written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] | None = self.path.open("w", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the results file {str(self.path)!r}: {exc}") from exc
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"results file {self.path} is closed")
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
