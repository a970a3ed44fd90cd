"""When anomalous windows become an alert episode (the live monitor's alert policy)."""

from __future__ import annotations

import dataclasses

from machine_monitor.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AlertPolicy:
    """When windows become an alert episode.

    Parameters
    ----------
    k, n : int
        Open an alert when ``k`` of the last ``n`` scored windows are anomalous.
    quiet_seconds : float
        Close it after this long without an anomalous window.
    margin : float
        A window is anomalous above ``threshold + margin * |threshold|``. The
        model's threshold is a high percentile of a handful of held-out clips,
        which fresh normal windows exceed now and then; the margin keeps that
        from waking anyone. 0 uses the model's threshold as is.
    """

    k: int = 3
    n: int = 5
    quiet_seconds: float = 30.0
    margin: float = 0.1

    def __post_init__(self):
        if not 1 <= self.k <= self.n:
            raise ConfigError(f"alert policy needs 1 <= k <= n, got k={self.k}, n={self.n}")
        if self.quiet_seconds < 0 or self.margin < 0:
            raise ConfigError(f"quiet_seconds and margin must be >= 0, got {self.quiet_seconds}, {self.margin}")

    def level(self, threshold: float) -> float:
        """The score a window must exceed to count as anomalous."""
        return threshold + self.margin * abs(threshold)
