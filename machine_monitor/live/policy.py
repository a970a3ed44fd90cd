"""When anomalous windows become an alert episode (the live monitor's alert policy)."""

from __future__ import annotations

import dataclasses
import logging
import math

from machine_monitor.errors import ConfigError
from machine_monitor.threshold import AlertRule, live_calibration

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AlertPolicy:
    """When windows become an alert episode.

    Parameters
    ----------
    k, n : int
        Open an alert when ``k`` of the last ``n`` scored windows are anomalous.
    quiet_seconds : float
        Close it after this long without an anomalous window.
    margin : float or None
        ``None`` (default): a window is anomalous above the model's calibrated live
        level, set at training for ``false_alarms_per_day`` with this very rule (see
        :meth:`window_level`). A number: above ``threshold + margin * |threshold|``
        instead (the clip threshold raised by hand; also what a model without a live
        calibration gets, with margin 0.1).
    false_alarms_per_day : float or None
        Target false alerts per day for the calibrated level; ``None``: the model's.
    """

    k: int = 3
    n: int = 5
    quiet_seconds: float = 30.0
    margin: float | None = None
    false_alarms_per_day: float | None = None

    def __post_init__(self):
        if not 1 <= self.k <= self.n:
            raise ConfigError(f"alert policy needs 1 <= k <= n, got k={self.k}, n={self.n}")
        if self.quiet_seconds < 0 or (self.margin is not None and self.margin < 0):
            raise ConfigError(f"quiet_seconds and margin must be >= 0, got {self.quiet_seconds}, {self.margin}")
        if self.false_alarms_per_day is not None and not self.false_alarms_per_day > 0:
            raise ConfigError(f"false alarms per day must be > 0, not {self.false_alarms_per_day!r}")

    def level(self, threshold: float) -> float:
        """``threshold`` raised by the margin (0.1 when the policy has none)."""
        margin = 0.1 if self.margin is None else self.margin
        return threshold + margin * abs(threshold)

    def window_level(self, detector, *, window: int, hop: int) -> tuple[float, str]:
        """The score a window must exceed to count as anomalous, and how it was set.

        The model's calibrated live level when its rule (k, n, quiet period, window,
        hop) and target are this policy's; re-calibrated from the model's out-of-fold
        window streams when only k, n, the quiet period or the target differ; the clip
        threshold plus the margin otherwise.
        """
        thr = detector.threshold_value_
        live = (getattr(detector, "calibration_", None) or {}).get("live")
        if self.margin is not None or not live:
            why = "" if self.margin is not None else " (the model has no live calibration)"
            return self.level(thr), f"clip threshold + {100 * (0.1 if self.margin is None else self.margin):g} %{why}"
        sr = detector.feature_config.sr
        rule = AlertRule(k=self.k, n=self.n, quiet_windows=max(1, math.ceil(self.quiet_seconds * sr / hop)),
                         hop_seconds=hop / sr)
        target = self.false_alarms_per_day or live["target_false_alarms_per_day"]
        same_windows = round(live["window_seconds"] * sr) == window and round(live["hop_seconds"] * sr) == hop
        if same_windows and rule == AlertRule(**live["rule"]) and target == live["target_false_alarms_per_day"]:
            fit = live.get("expected_false_alarms_per_day_with_fit_uncertainty")
            return float(live["value"]), (f"calibrated for {target:g} false alerts/day "
                                          f"(expected {live['expected_false_alarms_per_day']:.2g}"
                                          + (f"; {fit:.2g} with the fit's uncertainty" if fit is not None else "")
                                          + ")")
        streams = getattr(detector, "calibration_streams_", None)
        if same_windows and streams:
            cal = live_calibration(streams, rule, false_alarms_per_day=target, block=live.get("block", 1),
                                   confidence=live.get("confidence", 0.0), audio_seconds=live.get("audio_seconds"),
                                   scale=live.get("scale", "positive"), components=live.get("components", 1))
            return max(float(cal["value"]), thr), f"re-calibrated for this rule and {target:g} false alerts/day"
        log.warning("the model's live level was calibrated for %.2f s windows every %.3f s; these differ: "
                    "using it as is", live["window_seconds"], live["hop_seconds"])
        return float(live["value"]), "calibrated for other windows (used as is)"
