"""Alarm thresholds from the scores of normal (or known-mix) clips.

Two ways, both recorded with the model so a reader of ``model.json`` knows how
the alarm was set:

* ``percentile``: the ``p``-th percentile of scores of held-out *normal* clips
  (the clips the network never trained on). Expected false-alarm rate ~ ``1 - p/100``.
* ``contamination``: alibi-detect style; scores of a folder known to hold a fraction
  ``c`` of anomalies, threshold at their ``100 * (1 - c)``-th percentile.
* ``gamma``: a gamma distribution fitted to normal scores (DCASE baseline), threshold
  at its ``p``-th percentile; extrapolates beyond the largest score seen.
"""

from __future__ import annotations

import numpy as np

from machine_monitor.errors import ConfigError

DEFAULT_PERCENTILE = 99.0


def _finite(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ConfigError("cannot set a threshold from zero finite scores")
    return s


def _check_percentile(p: float) -> float:
    p = float(p)
    if not 0.0 < p <= 100.0:
        raise ConfigError(f"percentile must be in (0, 100], not {p!r}")
    return p


def percentile_threshold(scores, *, percentile: float = DEFAULT_PERCENTILE) -> dict:
    """Threshold at the ``percentile`` of normal scores (linear interpolation)."""
    p = _check_percentile(percentile)
    s = _finite(scores)
    return {"method": "percentile", "percentile": p, "value": float(np.percentile(s, p)), "n_scores": int(s.size)}


def contamination_threshold(scores, *, contamination: float) -> dict:
    """Threshold for a mix known to hold ``contamination`` anomalies (0 < c < 0.5)."""
    c = float(contamination)
    if not 0.0 < c < 0.5:
        raise ConfigError(f"contamination must be in (0, 0.5), not {contamination!r}")
    s = _finite(scores)
    return {
        "method": "contamination",
        "contamination": c,
        "percentile": 100.0 * (1.0 - c),
        "value": float(np.percentile(s, 100.0 * (1.0 - c))),
        "n_scores": int(s.size),
    }


def gamma_threshold(scores, *, percentile: float = DEFAULT_PERCENTILE) -> dict:
    """Threshold at the ``percentile`` of a gamma distribution fitted to normal scores."""
    from scipy import stats

    p = _check_percentile(percentile)
    s = _finite(scores)
    if np.unique(s).size < 3:
        # No distribution can be fitted to one or two values: say so and use them as they are.
        return {**percentile_threshold(s, percentile=p), "note": f"gamma fit needs 3+ distinct scores, had {s.size}"}
    shift = min(0.0, float(s.min())) - 1e-12  # gamma needs positive support
    with np.errstate(all="ignore"):
        a, loc, scale = stats.gamma.fit(s - shift, floc=0.0)
    value = float(stats.gamma.ppf(min(p, 99.9999) / 100.0, a, loc=loc, scale=scale)) + shift
    if not np.isfinite(value):
        return {**percentile_threshold(s, percentile=p), "note": "gamma fit did not converge"}
    return {"method": "gamma", "percentile": p, "value": value, "n_scores": int(s.size),
            "gamma": {"shape": float(a), "scale": float(scale), "shift": shift}}


def fit_threshold(scores, *, method: str = "percentile", percentile: float = DEFAULT_PERCENTILE,
                  contamination: float | None = None) -> dict:
    """Dispatch on ``method`` (``percentile`` | ``gamma`` | ``contamination``)."""
    if method == "percentile":
        return percentile_threshold(scores, percentile=percentile)
    if method == "gamma":
        return gamma_threshold(scores, percentile=percentile)
    if method == "contamination":
        if contamination is None:
            raise ConfigError("threshold method 'contamination' needs a contamination fraction")
        return contamination_threshold(scores, contamination=contamination)
    raise ConfigError(f"threshold method must be percentile, gamma or contamination, not {method!r}")
