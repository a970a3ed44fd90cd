"""Calibration: from out-of-fold scores of normal sound to thresholds and expected false-alarm rates.

Pure functions (numpy / scipy only). A detector gathers the evidence while it fits,
every score coming from models (networks *and* scorer) that never saw the recording
it scores, with recordings of one group (a session) on the same side of every split
(:func:`group_folds`); this module turns that evidence into one threshold per
decision unit and says how many scores each rests on and what rate of false alarms
it expects:

``clip``
    A clip (or a file up to a clip long) is flagged when its score exceeds the
    ``1 - clip_rate`` quantile of a tail model fitted to the out-of-fold clip scores
    (:func:`clip_calibration`). The model follows the scale the detector kind declares
    (:func:`tail_model`): positive scores (distances), a gamma fitted by maximum
    likelihood, at the quantile's 90 % upper confidence bound; standardised (z-like)
    scores, a normal, at its predictive quantile (Student's t prediction bound).
    Expected share of normal clips flagged: ``clip_rate`` (default 1 %).
``long file``
    A long file is scored in ``n`` windows and flagged by its *worst* window. The
    maximum of ``n`` window scores exceeds a clip threshold far more often than one
    clip does, so the threshold grows with ``n``: the window-score tail model's quantile
    at ``(1 - clip_rate) ** (1 / n)`` (:func:`worst_window_threshold`), which keeps
    the file-wise false-alarm rate at ``clip_rate`` whatever the length, assuming
    windows independent (scan's windows do not overlap; dependence only lowers the
    true rate).
``live alert``
    The monitor opens an alert when ``k`` of the last ``n`` sliding windows exceed a
    window level and closes it after a quiet period (:class:`AlertCounter`, the very
    code the monitor runs). The level is set for a target number of false alerts per
    day (:func:`live_calibration`): the out-of-fold window-score streams of the
    training audio are reduced to ``M_t``, the k-th largest of the last ``n`` window
    scores (an alert can open at ``t`` only if ``M_t`` exceeds the level), then to the
    maxima of ``M`` over blocks one window long (blocks share no audio); a model of the
    block maxima (a gamma; for z-like scores a normal of each recording's offset plus a
    Gumbel of the excursions within it, :class:`RecordingMaxima`), counting at most one
    alert per block, gives ``alerts per day =
    P(block max > L) * blocks per day``, and the level solves it for the target. The
    model's tail is the extrapolation beyond the audio available; the number of blocks
    it rests on is recorded.

Also here: the machine's level profile (:func:`level_profile`) that lets the monitor
tell a stopped machine (sound far quieter than any training audio) from an anomaly.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

from machine_monitor.errors import ConfigError

DEFAULT_PERCENTILE = 99.0
#: Expected share of normal clips (and of normal long files) flagged.
DEFAULT_CLIP_FALSE_ALARM_RATE = 0.01
#: Target false alerts per day of continuous live monitoring of normal sound.
DEFAULT_FALSE_ALARMS_PER_DAY = 0.1
#: Thresholds resting on fewer scores than this come with a loud warning.
MIN_SCORES = 10
#: Less normal audio than this (seconds) is thin evidence for a live alert level.
MIN_AUDIO_SECONDS = 300.0
#: Thresholds are upper confidence bounds: the target rate holds with this confidence given the evidence's size.
DEFAULT_CONFIDENCE = 0.9
#: Parametric-bootstrap refits behind a confidence bound.
N_BOOTSTRAP = 400
#: Default number of out-of-fold splits (fewer when there are fewer groups).
DEFAULT_FOLDS = 5
#: The live calibration warns when the fit's uncertainty multiplies the expected alert rate beyond this.
FIT_UNCERTAINTY_WARN = 10.0
#: A window this many dB below the quietest 1 % of training audio means the machine is stopped.
STOPPED_MARGIN_DB = 10.0
#: Level blocks (seconds) for the operating-state check.
LEVEL_BLOCK_SECONDS = 0.5
SECONDS_PER_DAY = 86_400.0


# --------------------------------------------------------------------------------------
# plain thresholds (kept for ``threshold`` with a known contamination, and old models)
# --------------------------------------------------------------------------------------
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


def _check_rate(rate: float, what: str = "false-alarm rate") -> float:
    r = float(rate)
    if not 0.0 < r < 1.0:
        raise ConfigError(f"{what} must be in (0, 1), not {rate!r}")
    return r


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


# --------------------------------------------------------------------------------------
# the tail model: a gamma distribution fitted by maximum likelihood
# --------------------------------------------------------------------------------------
def _gamma_mle(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood gamma shape and scale of each row of ``x`` (> 0): Minka's start + 3 Newton steps."""
    from scipy.special import digamma, polygamma

    m = x.mean(axis=-1)
    s = np.maximum(np.log(m) - np.log(x).mean(axis=-1), 1e-12)
    a = (3 - s + np.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)
    for _ in range(3):
        a = np.maximum(a - (np.log(a) - digamma(a) - s) / (1 / a - polygamma(1, a)), 1e-6)
    return a, m / a


def _gamma_location(s: np.ndarray) -> float:
    """Location (below the smallest score) of the gamma of highest likelihood with shape >= 1.

    Shape >= 1 keeps the density finite at the location, so the likelihood has a maximum
    (below 1 it grows without bound as the location nears the smallest score, and a
    sham heavy tail follows). Profiled over a log-spaced grid of distances below the minimum.
    """
    from scipy.special import gammaln

    lo = float(s.min())
    spread = float(np.subtract(*np.percentile(s, [75, 25]))) or float(np.ptp(s)) or 1.0
    locs = lo - spread * np.logspace(-3, 2, 60)
    x = s[None, :] - locs[:, None]
    a, scale = _gamma_mle(x)
    a = np.maximum(a, 1.0)
    scale = x.mean(axis=1) / a
    ll = ((a - 1) * np.log(x).sum(axis=1) - x.sum(axis=1) / scale - s.size * (gammaln(a) + a * np.log(scale)))
    return float(locs[int(np.nanargmax(ll))])


class _TailRecord:
    """``to_dict`` / ``from_dict`` of a frozen dataclass tail model, JSON-safe: non-finite
    floats as ``None``, tuples as lists; a field an older model lacks takes its default."""

    def to_dict(self) -> dict:
        d = {"family": self.family}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, float) and not math.isfinite(v):
                v = None
            d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: dict):
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name in d:
                v = d[f.name]  # f.type is the annotation's text (postponed annotations)
                kw[f.name] = (int(v) if f.type == "int" else tuple(float(x) for x in v) if f.type == "tuple"
                              else float("nan") if v is None else float(v))
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class GammaTail(_TailRecord):
    """A gamma distribution fitted to scores shifted to positive support.

    ``shape``, ``scale`` are the gamma's; ``shift`` is subtracted from a score
    before it is evaluated; ``n`` scores were fitted. With fewer than 3 distinct
    scores no distribution can be fitted: ``shape`` is NaN and quantiles fall back
    to the largest score seen (``max_score``), which says nothing beyond it.

    ``boot_shape`` / ``boot_scale``: refits of the gamma to samples of size ``n_eff``
    drawn from the fitted one (parametric bootstrap, seeded); :meth:`isf` with a
    ``confidence`` returns that quantile of their quantiles: a threshold exceeded at
    most at the rate asked, with that confidence, given how few scores there were.
    """

    shape: float
    scale: float
    shift: float
    n: int
    max_score: float
    n_eff: int = 0
    boot_shape: tuple = ()
    boot_scale: tuple = ()
    family = "gamma"

    @classmethod
    def fit(cls, scores, *, n_eff: int | None = None, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> GammaTail:
        from scipy import stats

        s = _finite(scores)
        if np.unique(s).size < 3:
            return cls(float("nan"), float("nan"), 0.0, int(s.size), float(s.max()))
        # Positive scores (distances, energies) have a natural zero; scores that reach zero or below
        # (standardised or fused scores, decision values) get the location of highest likelihood.
        shift = 0.0 if float(s.min()) > 0 else _gamma_location(s)
        with np.errstate(all="ignore"):
            a, _, scale = stats.gamma.fit(s - shift, floc=0.0)
        if not (np.isfinite(a) and np.isfinite(scale) and a > 0 and scale > 0):
            return cls(float("nan"), float("nan"), 0.0, int(s.size), float(s.max()))
        ne = int(max(3, min(s.size, n_eff or s.size)))
        boot_a, boot_s = (), ()
        if n_boot:
            x = np.random.default_rng(seed).gamma(a, scale, size=(int(n_boot), ne))
            ba, bs = _gamma_mle(np.maximum(x, 1e-300))
            ok = np.isfinite(ba) & np.isfinite(bs) & (ba > 0) & (bs > 0)
            boot_a, boot_s = tuple(float(v) for v in ba[ok]), tuple(float(v) for v in bs[ok])
        return cls(float(a), float(scale), float(shift), int(s.size), float(s.max()), ne, boot_a, boot_s)

    @property
    def fitted(self) -> bool:
        return bool(np.isfinite(self.shape))

    def isf(self, p: float, *, confidence: float | None = None) -> float:
        """The score exceeded with probability ``p`` (inverse survival function).

        ``confidence``: the upper confidence bound of that score (bootstrap), so that the
        true exceedance probability is at most ``p`` with this confidence.
        """
        from scipy import stats

        if not self.fitted:
            return self.max_score
        p = min(max(float(p), 1e-300), 1.0)
        point = float(stats.gamma.isf(p, self.shape, scale=self.scale))
        if confidence and self.boot_shape:
            boot = stats.gamma.isf(p, np.asarray(self.boot_shape), scale=np.asarray(self.boot_scale))
            boot = boot[np.isfinite(boot)]
            if boot.size:
                point = max(point, float(np.quantile(boot, float(confidence))))
        return point + self.shift

    def sf(self, x) -> np.ndarray:
        """Probability that a score exceeds ``x`` (point estimate)."""
        from scipy import stats

        x = np.asarray(x, dtype=np.float64)
        if not self.fitted:
            return (x < self.max_score).astype(np.float64)
        return stats.gamma.sf(x - self.shift, self.shape, scale=self.scale)


#: Score scales a detector kind can declare (``score_scale``), and the tail model of each.
SCORE_SCALES = ("positive", "z")


@dataclasses.dataclass(frozen=True)
class NormalTail(_TailRecord):
    """A normal distribution for z-like scores, with *predictive* quantiles.

    For standardised scores (no natural zero, unbounded below, light-tailed: a
    standardised log distance, or the largest of a few of them) no location has to be
    fitted: ``mean`` and ``sd`` (``ddof=1``) of ``n`` scores. A fresh score from the same
    normal exceeds ``mean + sd * sqrt(1 + 1/n) * t_{n-1}(1 - p)`` with probability
    exactly ``p`` (the prediction bound: the uncertainty of ``mean`` and ``sd`` from
    ``n`` scores included), so :meth:`isf` is that: the *expected* share of fresh normal
    scores above it is the rate asked. ``confidence`` is accepted for the common
    interface and not used. Fewer than 3 distinct scores: unfitted, quantiles fall
    back to the largest score.

    Checked on SYNTHETIC maxima of 4 standard normals (the default detector's fusion),
    300 repeats: 1 % asked, 0.7-1.5 % got from 14-50 scores (the maximum's right skew
    makes it a little optimistic); from t(5) members, 3 %.

    ``components > 1``: each score is the largest of that many parts, and the normal is the
    parts' law (fitted by :func:`max_normal_fit`), the bound each part's; ``P(score > x) =
    1 - P(part <= x) ** components``. Near the 1 % level this is about the plain normal's
    quantile; far out (a long file's worst of hundreds of windows) a normal fitted to the
    maxima themselves makes their tail far too thin.
    """

    mean: float
    sd: float
    n: int
    max_score: float
    n_eff: int = 0
    components: int = 1
    family = "normal"

    @classmethod
    def fit(cls, scores, *, n_eff: int | None = None, components: int = 1, **_) -> NormalTail:
        """``n_eff``: independent scores among them (e.g. recordings, when several windows of one
        recording are scores): the prediction bound counts these (default: every score).
        ``components``: each score is the largest of this many parts (the class notes)."""
        s = _finite(scores)
        ne = int(max(2, min(s.size, n_eff or s.size)))
        m = max(1, int(components))
        if np.unique(s).size < 3:
            return cls(float("nan"), float("nan"), int(s.size), float(s.max()), ne, m)
        if m > 1:
            return cls(*max_normal_fit(s, m), int(s.size), float(s.max()), ne, m)
        return cls(float(s.mean()), float(s.std(ddof=1)), int(s.size), float(s.max()), ne)

    @property
    def fitted(self) -> bool:
        return bool(np.isfinite(self.sd) and self.sd > 0)

    @property
    def _df(self) -> int:
        return max(1, (self.n_eff or self.n) - 1)

    def _spread(self) -> float:
        return self.sd * math.sqrt(1.0 + 1.0 / (self.n_eff or self.n))

    def isf(self, p: float, *, confidence: float | None = None) -> float:
        """The score a fresh one exceeds with expected probability ``p`` (predictive)."""
        from scipy import stats

        if not self.fitted:
            return self.max_score
        p = min(max(float(p), 1e-300), 1.0)
        if self.components > 1:  # each part's exceedance for p of their maximum
            p = -math.expm1(math.log1p(-min(p, 1.0 - 1e-16)) / self.components)
        return float(self.mean + self._spread() * stats.t.isf(p, self._df))

    def sf(self, x) -> np.ndarray:
        """Predictive probability that a fresh score exceeds ``x``."""
        from scipy import stats

        x = np.asarray(x, dtype=np.float64)
        if not self.fitted:
            return (x < self.max_score).astype(np.float64)
        u = (x - self.mean) / self._spread()
        if self.components > 1:
            return -np.expm1(self.components * stats.t.logcdf(u, self._df))
        return stats.t.sf(u, self._df)


@dataclasses.dataclass(frozen=True)
class GumbelTail(_TailRecord):
    """A Gumbel distribution fitted by maximum likelihood to block maxima of z-like scores.

    The limit law of maxima of light-tailed scores (a standardised log distance is
    about normal): the live unit's model of its block maxima on the ``z`` scale. A gamma
    with a fitted location on ten-odd maxima put its tail at an exponential from the
    smallest maximum, levels 3-9 times the largest score seen (issue 10). ``confidence``
    is accepted for the common interface and not used (the live level is a point
    estimate). Fewer than 3 distinct maxima: unfitted, the largest one.
    """

    loc: float
    scale: float
    n: int
    max_score: float
    family = "gumbel"

    @classmethod
    def fit(cls, scores, **_) -> GumbelTail:
        from scipy import stats

        s = _finite(scores)
        if np.unique(s).size < 3:
            return cls(float("nan"), float("nan"), int(s.size), float(s.max()))
        with np.errstate(all="ignore"):
            loc, scale = stats.gumbel_r.fit(s)
        if not (np.isfinite(loc) and np.isfinite(scale) and scale > 0):
            return cls(float("nan"), float("nan"), int(s.size), float(s.max()))
        return cls(float(loc), float(scale), int(s.size), float(s.max()))

    @property
    def fitted(self) -> bool:
        return bool(np.isfinite(self.scale))

    def isf(self, p: float, *, confidence: float | None = None) -> float:
        if not self.fitted:
            return self.max_score
        p = min(max(float(p), 1e-300), 1.0 - 1e-16)
        return float(self.loc - self.scale * math.log(-math.log1p(-p)))

    def sf(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not self.fitted:
            return (x < self.max_score).astype(np.float64)
        return -np.expm1(-np.exp(-(x - self.loc) / self.scale))


@dataclasses.dataclass(frozen=True)
class RecordingMaxima(_TailRecord):
    """Block maxima of a z-like live statistic as a recording's offset plus an excursion within it.

    Fitted from streams, not from pooled block maxima: each stream (one recording) has an
    *offset* ``o``, the median of its k-th-of-n statistic ``M_t`` (a stream shorter than the
    rule: its largest window score), and *excursions* ``M_t - o`` whose block maxima are the
    within-recording fluctuation. Offsets get a normal across recordings (sessions differ:
    the usual cause of false alarms), excursions a Gumbel (the law of maxima of light-tailed
    scores); ``P(block max > L) = E_o[P(excursion > L - o)]``. Why not one Gumbel on the
    pooled maxima: with a few recordings their spread is mostly the offsets', which a Gumbel
    extrapolates as if every block drew a new one from an exponential tail (sensiml-fan:
    levels of 13-18 where no normal window passed 4.4; issue 10). Point estimates, as the
    Gumbel's. No excursion evidence (every stream one window): the offsets are window scores
    themselves, and their law is the window score's: a normal, or for a score that is the
    largest of ``components`` standardised parts (the default detector's fused score) the
    law of the largest of that many normals, fitted by maximum likelihood
    (:func:`max_normal_fit`). A normal fitted to such maxima matches them near the bulk
    but thins their far tail by orders of magnitude (at 0.1 alerts a day the level is a
    one-in-10^5 quantile), and fresh normal sound then alerts far more often than the
    target. One recording: its offset, no spread.
    """

    offset_mean: float
    offset_sd: float
    n_recordings: int
    within_loc: float
    within_scale: float
    n_within: int
    max_excursion: float
    max_score: float
    components: int = 1
    family = "recording-normal+gumbel"

    @classmethod
    def fit_streams(cls, streams: Sequence, rule: AlertRule, *, block: int, components: int = 1) -> RecordingMaxima:
        from scipy import stats

        offsets, excursions = [], []
        for s in streams:
            s = np.asarray(s, dtype=np.float64)
            if s.size < rule.k:
                offsets.append(float(s.max()))
                continue
            m = kth_of_last_n(s, k=rule.k, n=rule.n)[rule.k - 1:]
            o = float(np.median(m))
            offsets.append(o)
            excursions.append(block_maxima([m - o + 0.0], AlertRule(1, 1, 1, rule.hop_seconds), block=block))
        o = np.asarray(offsets, dtype=np.float64)
        e = np.concatenate(excursions) if excursions else np.zeros(0)
        m = max(1, int(components))
        if not excursions and m > 1 and np.unique(o).size >= 3:
            mean, sd = max_normal_fit(o, m)  # the parts' law; the offsets are maxima of m of them
            return cls(mean, sd, int(o.size), float("nan"), float("nan"), 0, 0.0, float(o.max()), m)
        sd = float(o.std(ddof=1)) if np.unique(o).size >= 2 else 0.0
        loc = scale = float("nan")
        if np.unique(e).size >= 3:
            with np.errstate(all="ignore"):
                loc, scale = (float(v) for v in stats.gumbel_r.fit(e))
            if not (math.isfinite(loc) and math.isfinite(scale) and scale > 0):
                loc = scale = float("nan")
        return cls(float(o.mean()), sd, int(o.size), loc, scale, int(e.size), float(e.max()) if e.size else 0.0,
                   float(o.max() + (e.max() if e.size else 0.0)))

    @property
    def fitted(self) -> bool:
        return self.n_recordings > 0 and math.isfinite(self.offset_mean)

    def _within_sf(self, d: np.ndarray) -> np.ndarray:
        if math.isfinite(self.within_scale):
            with np.errstate(over="ignore"):  # far below the location: exp -> inf, sf -> 1 (exact)
                return -np.expm1(-np.exp(-(d - self.within_loc) / self.within_scale))
        return (d < self.max_excursion).astype(np.float64)  # no fit: the largest excursion seen, always

    def sf(self, x) -> np.ndarray:
        """Probability that one block's maximum exceeds ``x``."""
        from scipy import stats

        x = np.asarray(x, dtype=np.float64)
        if self.offset_sd <= 0:
            return self._within_sf(x - self.offset_mean)
        if not math.isfinite(self.within_scale):  # a step excursion: the offsets' law, exactly
            # P(max of m parts > x) = 1 - P(part <= x)^m (m = 1: the normal's sf)
            log_cdf = stats.norm.logcdf(x - self.max_excursion, self.offset_mean, self.offset_sd)
            return -np.expm1(self.components * log_cdf)
        nodes, weights = np.polynomial.hermite_e.hermegauss(96)  # E over a standard normal offset
        o = self.offset_mean + self.offset_sd * nodes
        return (self._within_sf(x[..., None] - o) * (weights / weights.sum())).sum(axis=-1)

    def sf_with_fit_uncertainty(self, x: float, *, draws: int = 4000, seed: int = 0) -> float:
        """:meth:`sf` averaged over the uncertainty of the offsets' law fitted to ``n_recordings``.

        The offsets' mean and sd are drawn as from ``n_recordings`` normal observations
        (``sd`` scaled by ``sqrt((n - 1) / chi2(n - 1))``, the mean by ``sd / sqrt(n)``): an
        approximation for the ``components`` law, whose parts' estimates come from maxima. The
        Gumbel of the excursions stays as fitted. Far out (0.1 alerts a day is a one-in-10^5
        block) a spread estimated from few recordings dominates: this is what the point
        estimate does not say. Fewer than 3 recordings or no spread: :meth:`sf`.
        """
        from scipy import special

        n = int(self.n_recordings)
        if n < 3 or not self.offset_sd > 0:
            return float(self.sf(x))
        rng = np.random.default_rng(seed)
        sd = self.offset_sd * np.sqrt((n - 1) / rng.chisquare(n - 1, int(draws)))
        mean = self.offset_mean + sd / math.sqrt(n) * rng.standard_normal(int(draws))
        if not math.isfinite(self.within_scale):
            u = (float(x) - self.max_excursion - mean) / sd
            return float(np.mean(-np.expm1(self.components * special.log_ndtr(u))))
        nodes, weights = np.polynomial.hermite_e.hermegauss(96)
        o = mean[:, None] + sd[:, None] * nodes[None, :]
        return float((self._within_sf(float(x) - o) @ (weights / weights.sum())).mean())

    def isf(self, p: float, *, confidence: float | None = None) -> float:
        from scipy import optimize, stats

        p = min(max(float(p), 1e-300), 1.0 - 1e-12)
        if self.offset_sd > 0 and not math.isfinite(self.within_scale):
            part = -np.expm1(np.log1p(-p) / self.components)  # each part's exceedance for p of the max
            return float(stats.norm.isf(part, self.offset_mean, self.offset_sd) + self.max_excursion)
        if self.offset_sd <= 0 and not math.isfinite(self.within_scale):
            return self.max_score
        lo = self.offset_mean - 10 * self.offset_sd - 10
        hi = self.offset_mean + 10 * (self.offset_sd + self.within_scale) + 10
        while self.sf(hi) > p:
            hi += hi - lo
        return float(optimize.brentq(lambda x: float(self.sf(x)) - p, lo, hi, xtol=1e-9, rtol=1e-12))


def max_normal_fit(maxima, m: int) -> tuple[float, float]:
    """Maximum-likelihood ``(mean, sd)`` of ``m`` iid normals whose largest is each of ``maxima``.

    The density of the largest of ``m`` draws of ``N(mean, sd)`` is
    ``m * phi(u) * Phi(u) ** (m - 1) / sd`` at ``u = (x - mean) / sd``. ``m = 1``: the
    normal's own estimates. Needs at least 3 distinct values.

    Parameters
    ----------
    maxima : array_like, shape ``(n,)``
    m : int >= 1

    Returns
    -------
    (mean, sd) : tuple of float
    """
    from scipy import optimize, stats

    x = _finite(maxima)
    if np.unique(x).size < 3:
        raise ConfigError(f"a maximum-of-normals law needs at least 3 distinct values, got {np.unique(x).size}")
    m = int(m)
    if m == 1:
        return float(x.mean()), float(x.std())

    def nll(theta):
        mean, log_sd = theta
        u = (x - mean) / np.exp(log_sd)
        return -float(np.sum(stats.norm.logpdf(u) + (m - 1) * stats.norm.logcdf(u)) - x.size * log_sd)

    # Start from the moments of the maximum of m standard normals (Blom's approximation of its mean).
    sd0 = float(x.std()) or 1.0
    mean0 = float(x.mean()) - sd0 * stats.norm.ppf((m - 0.375) / (m + 0.25))
    fit = optimize.minimize(nll, [mean0, math.log(sd0)], method="Nelder-Mead",
                            options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
    return float(fit.x[0]), float(math.exp(fit.x[1]))


def maxima_tail_model(scale: str = "positive"):
    """The live unit's model of block maxima for a score scale: a gamma (``positive``), a Gumbel (``z``)."""
    tail_model(scale)  # refuses an unknown scale
    return GumbelTail if scale == "z" else GammaTail


def tail_model(scale: str = "positive"):
    """The tail model for a detector kind's declared score scale.

    ``positive`` (distances, energies, reconstruction errors: a natural zero, skewed):
    :class:`GammaTail`, thresholds at the upper confidence bound of its quantile.
    ``z`` (standardised, fused or log scores: unbounded below, light-tailed):
    :class:`NormalTail`, thresholds at the predictive quantile (expected rate = target).
    """
    if scale == "positive":
        return GammaTail
    if scale == "z":
        return NormalTail
    raise ConfigError(f"score scale must be one of {', '.join(SCORE_SCALES)}, not {scale!r}")


def tail_from_dict(d: dict):
    """A tail model back from its ``to_dict`` (a dict without ``family`` is a gamma: older models)."""
    family = d.get("family", "gamma")
    models = {"normal": NormalTail, "gumbel": GumbelTail, RecordingMaxima.family: RecordingMaxima}
    return models.get(family, GammaTail).from_dict(d)


def gamma_threshold(scores, *, percentile: float = DEFAULT_PERCENTILE) -> dict:
    """Threshold at the ``percentile`` of a gamma distribution fitted to normal scores."""
    p = _check_percentile(percentile)
    tail = GammaTail.fit(scores)
    if not tail.fitted:
        out = percentile_threshold(scores, percentile=p)
        return {**out, "note": f"gamma fit needs 3+ distinct scores, had {tail.n}"}
    value = tail.isf(1.0 - min(p, 99.9999) / 100.0)
    return {"method": "gamma", "percentile": p, "value": value, "n_scores": tail.n,
            "gamma": {"shape": tail.shape, "scale": tail.scale, "shift": tail.shift}}


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


# --------------------------------------------------------------------------------------
# groups and out-of-fold splits
# --------------------------------------------------------------------------------------
def groups_from_paths(paths: Sequence, group_by: str | None = None) -> list[str]:
    """One group label per recording.

    Parameters
    ----------
    paths : sequence of str or None
        The recordings' paths (``None`` for an array: its own group).
    group_by : str or None
        ``None``: every recording its own group. ``"folder"``: recordings in one
        folder form a group. Otherwise a regular expression searched in the path:
        its first capture group (or the whole match) names the group; a path it
        does not match is its own group.

    Returns
    -------
    list of str, one per recording.
    """
    if group_by is not None and group_by != "folder":
        try:
            pattern = re.compile(group_by)
        except re.error as exc:
            raise ConfigError(f"group pattern {group_by!r} is not a regular expression: {exc}") from None
    out = []
    for i, p in enumerate(paths):
        own = f"#{i}" if p is None else str(p)
        if p is None or group_by is None:
            out.append(own)
        elif group_by == "folder":
            s = str(p).replace("\\", "/")
            out.append(s.rsplit("/", 1)[0] if "/" in s else ".")
        else:
            m = pattern.search(str(p))
            out.append(own if m is None else (m.group(1) if m.groups() and m.group(1) is not None else m.group(0)))
    return out


def group_folds(groups: Sequence, *, n_folds: int = DEFAULT_FOLDS) -> np.ndarray:
    """Assign recordings to out-of-fold splits, never splitting a group.

    Deterministic, and independent of any seed: the groups in name order (for file
    paths, roughly recording order) are dealt to the folds in turn, so neighbouring
    recordings (often one session) spread over the folds and every fold is a fair
    sample of the sessions. With fewer groups than ``n_folds``, one fold per group.

    Returns
    -------
    ndarray of int, shape ``(n_recordings,)``: each recording's fold, ``0 .. k-1``.
    """
    groups = [str(g) for g in groups]
    if not groups:
        raise ConfigError("cannot make folds of zero recordings")
    labels = sorted(set(groups))
    k = min(int(n_folds), len(labels))
    if k < 2:
        raise ConfigError(f"out-of-fold calibration needs at least 2 groups of recordings, got {len(labels)}")
    fold_of_group = {g: i % k for i, g in enumerate(labels)}
    return np.array([fold_of_group[g] for g in groups], dtype=np.int64)


# --------------------------------------------------------------------------------------
# the alert rule, shared by the calibration and the live monitor
# --------------------------------------------------------------------------------------
class AlertCounter:
    """The k-of-n alert lifecycle on a stream of anomalous / normal window flags.

    An alert opens when ``k`` of the last ``n`` windows (since the last alert closed)
    are anomalous, and closes after ``quiet_windows`` consecutive windows that are
    not. :meth:`update` returns ``"open"``, ``"close"`` or ``None``. The live monitor
    and the calibration run this same object.
    """

    def __init__(self, k: int, n: int, quiet_windows: int):
        if not 1 <= int(k) <= int(n):
            raise ConfigError(f"alert rule needs 1 <= k <= n, got k={k}, n={n}")
        if int(quiet_windows) < 1:
            raise ConfigError(f"an alert must close after at least one quiet window, not {quiet_windows}")
        self.k, self.n, self.quiet_windows = int(k), int(n), int(quiet_windows)
        self.reset()

    def reset(self) -> None:
        self.history: collections.deque[bool] = collections.deque(maxlen=self.n)
        self.open = False
        self.quiet = 0

    def update(self, anomalous: bool) -> str | None:
        self.history.append(bool(anomalous))
        if self.open:
            if anomalous:
                self.quiet = 0
                return None
            self.quiet += 1
            if self.quiet >= self.quiet_windows:
                self.open = False
                self.history.clear()
                return "close"
            return None
        if sum(self.history) >= self.k:
            self.open, self.quiet = True, 0
            return "open"
        return None


def count_alerts(scores, level: float, *, k: int, n: int, quiet_windows: int) -> int:
    """Alert episodes :class:`AlertCounter` opens on one continuous stream of window scores."""
    c = AlertCounter(k, n, quiet_windows)
    return sum(c.update(s > level) == "open" for s in np.asarray(scores, dtype=np.float64))


def kth_of_last_n(scores, *, k: int, n: int) -> np.ndarray:
    """``M_t``: the k-th largest of the last ``n`` window scores at each window.

    ``-inf`` while fewer than ``k`` windows have been seen. ``k`` of the last ``n``
    windows exceed a level exactly when ``M_t`` does.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return s
    padded = np.concatenate([np.full(n - 1, -np.inf), s])
    view = np.lib.stride_tricks.sliding_window_view(padded, n)
    return np.sort(view, axis=1)[:, n - k]


# --------------------------------------------------------------------------------------
# the decision units
# --------------------------------------------------------------------------------------
def clip_calibration(clip_scores, *, rate: float = DEFAULT_CLIP_FALSE_ALARM_RATE, groups=None,
                     confidence: float = DEFAULT_CONFIDENCE, scale: str = "positive",
                     n_eff: int | None = None) -> dict:
    """The clip threshold: ``1 - rate`` quantile of a tail model fitted to out-of-fold clip scores.

    The tail model follows the score's declared ``scale`` (:func:`tail_model`).
    ``positive``: a gamma, and the quantile is its upper ``confidence`` bound (parametric
    bootstrap of the gamma fit): with 20-50 scores the point estimate of a 99th
    percentile is exceeded by fresh normal clips far more often than 1 % of the time.
    ``z``: a normal, at its predictive quantile (the expected share of fresh normal
    clips above it is ``rate``, the uncertainty of the fit included; ``confidence``
    does not apply). A gamma on z-like scores needs a fitted location and its bootstrap
    bound on top, and on the default detector's fused scores it put the 1 % level far
    beyond every training score (issue 10).

    Parameters
    ----------
    clip_scores : array_like, shape ``(n,)``
        Out-of-fold scores of normal clips.
    rate : float
        Share of normal clips expected above the threshold.
    groups : sequence or None
        Each score's group, for the spread-across-groups check.
    confidence : float
        ``positive`` scale: the rate holds with this confidence (0: the point estimate).
    scale : {"positive", "z"}
        The score's scale, as the detector kind declares it (``score_scale``).
    n_eff : int or None
        How many of the scores are independent (recordings, when the scores are
        windows of a few recordings): the bound's uncertainty counts these.

    Returns
    -------
    dict with ``value``, ``method``, ``n`` (scores it rests on), ``expected_false_alarm_rate``,
    ``observed_false_alarm_rate`` (share of the given scores above it), ``tail`` (the
    fitted model), ``gamma`` (the same, for a gamma; else ``None``), ``scale``, ``promise``
    and ``warnings`` (list of str).
    """
    rate = _check_rate(rate)
    s = _finite(clip_scores)
    tail = tail_model(scale).fit(s, n_eff=n_eff)
    if scale == "z":
        confidence = 0.0
    warnings = []
    if tail.fitted:
        value, method = tail.isf(rate, confidence=confidence), tail.family
    else:
        value, method = float(s.max()), "max"
        warnings.append(f"the clip threshold is the largest of {s.size} scores: no distribution can be "
                        "fitted to fewer than 3 distinct scores")
    if s.size < MIN_SCORES:
        warnings.append(f"the clip threshold rests on only {s.size} out-of-fold clip scores (fewer than "
                        f"{MIN_SCORES}): its false-alarm rate is a guess; train on more recordings")
    promise = ("expected share of normal clips flagged (predictive quantile)" if scale == "z" else
               f"share of normal clips flagged, at most, with {confidence:.0%} confidence" if confidence else
               "share of normal clips flagged (point estimate)")
    out = {"value": float(value), "method": method, "n": int(s.size), "confidence": float(confidence),
           "scale": scale, "promise": promise,
           "expected_false_alarm_rate": rate, "point_estimate_rate": float(tail.sf(value)),
           "observed_false_alarm_rate": float(np.mean(s > value)),
           "tail": tail.to_dict(), "gamma": tail.to_dict() if isinstance(tail, GammaTail) else None,
           "warnings": warnings}
    if groups is not None:
        out["warnings"] += group_spread_warnings(np.asarray(clip_scores, dtype=np.float64), groups, rate,
                                                 scale=scale)
    return out


#: A training recording whose out-of-fold score sits this many robust spreads above the others'
#: (and above the clip threshold) is a suspect: it may not be normal sound (issue 14).
OOF_Z_LIMIT = 6.0
#: At most this share of the recordings are suspects; more is spread, not odd recordings.
OOF_MAX_SHARE = 0.1


def out_of_fold_outliers(scores, recordings, *, scale: str = "positive", z_limit: float = OOF_Z_LIMIT,
                         max_share: float = OOF_MAX_SHARE, min_recordings: int = 5) -> list[tuple[int, float, float]]:
    """Training recordings that score far above the others out of fold: suspects of not being normal.

    A recording's score is its worst unit. Robust statistics across recordings (median,
    MAD; on ``log`` scores for the ``positive`` scale, as they are skewed), so a suspect
    cannot hide by moving the reference (the clip threshold can: a gamma fitted with the
    suspect among its scores sat above it, 100 times the clean one). A floor on the spread
    (5 % on the log scale, 0.25 on the z scale) keeps near-identical recordings from making
    small differences look odd. None when there are fewer than ``min_recordings``
    recordings; at most the worst ``max_share`` of them (at least one): an odd recording
    also lifts the out-of-fold scores of recordings whose scorer it trained (two such at
    8 spreads beside one at 23). Recordings of a second mode (another session or speed)
    are not suspects: the networks blind to one of them heard the others. A suspect is
    only that: the caller confirms it with a model fitted without it.

    Parameters
    ----------
    scores : array_like [shape=(n_units,)]
        Out-of-fold unit scores.
    recordings : array_like [shape=(n_units,)]
        The recording each unit score is of (an index).

    Returns
    -------
    list of ``(recording, score, robust z)``, worst first.
    """
    scores = np.asarray(scores, dtype=np.float64)
    recordings = np.asarray(recordings)
    ids = np.unique(recordings)
    if ids.size < min_recordings or scores.size != recordings.size:
        return []
    worst = np.array([scores[recordings == r].max() for r in ids])
    if not np.isfinite(worst).all():
        return []
    v = worst if scale == "z" else np.log(np.maximum(worst, 1e-12))
    med = float(np.median(v))
    spread = max(1.4826 * float(np.median(np.abs(v - med))), 0.25 if scale == "z" else 0.05)
    z = (v - med) / spread
    hits = np.flatnonzero(z > z_limit)
    hits = hits[np.argsort(-z[hits])][: max(1, int(max_share * ids.size))]
    return [(int(ids[i]), float(worst[i]), float(z[i])) for i in hits]


def group_spread_warnings(scores, groups, rate: float = DEFAULT_CLIP_FALSE_ALARM_RATE, *,
                          scale: str = "positive") -> list[str]:
    """Warn when a whole group (a session) scores above the threshold the other groups give.

    For each group, the clip threshold is fitted without it; a group whose median
    out-of-fold score is above that sounded new to a calibration made from the other
    sessions: sessions differ more than one session varies, and fresh sessions
    will raise false alarms.
    """
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(list(groups), dtype=object)
    labels = list(dict.fromkeys(g.tolist()))
    if len(labels) < 3 or len(labels) == s.size:
        return []
    bad = []
    for lab in labels:
        others = s[g != lab]
        if others.size >= 3 and np.median(s[g == lab]) > tail_model(scale).fit(others, n_boot=0).isf(rate):
            bad.append(lab)
    if not bad:
        return []
    return [f"{len(bad)} of {len(labels)} groups of recordings score above the threshold the other groups give "
            f"(e.g. {bad[0]!r}): sessions differ widely; record more sessions of normal running"]


def worst_window_threshold(calibration: dict, n_windows: int) -> float:
    """Threshold for a file's worst of ``n_windows`` window scores.

    ``calibration`` is the ``"long_file"`` entry :func:`long_file_calibration` made.
    The file-wise false-alarm rate stays at its ``expected_false_alarm_rate``: each
    window's threshold is exceeded with probability ``1 - (1 - rate) ** (1 / n)``.
    """
    n = max(1, int(n_windows))
    tail = tail_from_dict(calibration.get("tail") or calibration["gamma"])
    rate = float(calibration["expected_false_alarm_rate"])
    per_window = -math.expm1(math.log1p(-rate) / n)
    value = tail.isf(per_window, confidence=calibration.get("confidence"))
    return max(value, float(calibration.get("floor", -math.inf)))


def long_file_calibration(window_scores, *, rate: float = DEFAULT_CLIP_FALSE_ALARM_RATE,
                          floor: float | None = None, confidence: float = DEFAULT_CONFIDENCE,
                          scale: str = "positive", n_eff: int | None = None, components: int = 1) -> dict:
    """The worst-window calibration: the scale's tail model (:func:`tail_model`) fitted to
    out-of-fold scan-window scores.

    ``floor``: the thresholds never go below it (the clip threshold: a long file
    is not flagged more easily than a clip). ``components`` (``z`` scale): each window
    score is the largest of this many parts (the detector kind's ``score_components``):
    the worst of hundreds of windows is a far quantile, where that shapes the tail
    (:class:`NormalTail`). Use :func:`worst_window_threshold`.
    """
    rate = _check_rate(rate)
    s = _finite(window_scores)
    tail = tail_model(scale).fit(s, n_eff=n_eff, **({"components": components} if scale == "z" else {}))
    if scale == "z":
        confidence = 0.0
    out = {"method": f"{tail.family}, family-wise over n windows", "n": int(s.size),
           "expected_false_alarm_rate": rate, "confidence": float(confidence), "scale": scale,
           "tail": tail.to_dict(), "gamma": tail.to_dict() if isinstance(tail, GammaTail) else None,
           "warnings": []}
    if floor is not None:
        out["floor"] = float(floor)
    if s.size < MIN_SCORES:
        out["warnings"].append(f"the long-file threshold rests on only {s.size} out-of-fold window scores")
    # A long file has 2 windows or more (up to 1.25 clips it is one clip unit).
    out["examples"] = {str(n): worst_window_threshold(out, n) for n in (2, 6, 60, 360)}
    return out


#: Live monitor defaults (the monitor and the calibration share them): window, hop, k of n, quiet period.
DEFAULT_LIVE_WINDOW_SECONDS = 2.0
DEFAULT_LIVE_HOP_SECONDS = 0.5
DEFAULT_ALERT_K, DEFAULT_ALERT_N = 3, 5
DEFAULT_QUIET_SECONDS = 30.0
#: A file up to this many clip lengths is one clip unit (scored whole).
WHOLE_FILE_TOLERANCE = 1.25


def live_geometry(*, sr: int, feature_hop: int, min_samples: int, clip_seconds: float | None,
                  window_seconds: float | None = None, hop_seconds: float | None = None) -> tuple[int, int]:
    """The live monitor's window and hop in samples.

    Window: ``window_seconds``, by default ``DEFAULT_LIVE_WINDOW_SECONDS`` or the training
    clip length if shorter, but at least one feature window (``min_samples``). Hop:
    ``hop_seconds`` (default ``DEFAULT_LIVE_HOP_SECONDS``) rounded to whole feature frames.
    """
    if window_seconds is None:
        clip = clip_seconds or DEFAULT_LIVE_WINDOW_SECONDS
        window = max(int(round(min(DEFAULT_LIVE_WINDOW_SECONDS, clip) * sr)), int(min_samples))
    else:
        window = int(round(float(window_seconds) * sr))
    h = DEFAULT_LIVE_HOP_SECONDS if hop_seconds is None else float(hop_seconds)
    if h <= 0:
        raise ConfigError(f"hop must be > 0 s, not {h}")
    return window, max(1, round(h * sr / feature_hop)) * int(feature_hop)


def unit_starts(n_samples: int, segment: int) -> np.ndarray:
    """Starts of the clip units ``scan`` scores a recording in.

    A recording up to ``WHOLE_FILE_TOLERANCE`` segments is one unit (the whole of it);
    a longer one is cut into back-to-back segments, the last aligned to its end.
    """
    if n_samples <= WHOLE_FILE_TOLERANCE * segment:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_samples - segment + 1, segment, dtype=np.int64)
    if starts[-1] + segment < n_samples:
        starts = np.append(starts, n_samples - segment)
    return starts


@dataclasses.dataclass(frozen=True)
class AlertRule:
    """A live alert rule in windows: ``k`` of ``n``, closed after ``quiet_windows``; one window per ``hop_seconds``."""

    k: int
    n: int
    quiet_windows: int
    hop_seconds: float

    @property
    def windows_per_day(self) -> float:
        return SECONDS_PER_DAY / self.hop_seconds


def block_maxima(streams: Sequence, rule: AlertRule, *, block: int) -> np.ndarray:
    """The k-th-of-n statistic's maximum over blocks of ``block`` windows of each stream.

    ``block`` = the windows that share audio (window / hop), so consecutive blocks cover
    disjoint audio. A stream too short for one block counts as one; a stream too short
    for the rule (fewer than ``k`` windows) contributes its largest window score (its
    windows overlap almost wholly: ``k`` of them above a level is about one above it).
    """
    block = max(1, int(block))
    out = []
    for s in streams:
        s = np.asarray(s, dtype=np.float64)
        if s.size == 0:
            continue
        if s.size < rule.k:
            out.append(float(s.max()))
            continue
        m = kth_of_last_n(s, k=rule.k, n=rule.n)[rule.k - 1:]
        n_full = m.size // block
        if n_full == 0:
            out.append(float(m.max()))
            continue
        out += m[: n_full * block].reshape(n_full, block).max(axis=1).tolist()
        rest = m[n_full * block:]
        if rest.size * 2 >= block:  # a last partial block of at least half a block counts too
            out.append(float(rest.max()))
    return np.asarray(out, dtype=np.float64)


def live_calibration(streams: Sequence, rule: AlertRule, *,
                     false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY, block: int = 1,
                     confidence: float = 0.0, audio_seconds: float | None = None,
                     scale: str = "positive", components: int = 1) -> dict:
    """The live window level for ``rule`` and a target rate of false alerts per day.

    Block maxima: the out-of-fold window-score streams are reduced to ``M_t``, the k-th
    largest of the last ``n`` window scores (an alert can open at ``t`` only if ``M_t``
    exceeds the level), and ``M`` to its maximum over blocks of ``block`` windows (one
    window length of audio, so blocks do not share audio). A model fitted to the block
    maxima (gamma; for ``scale="z"`` :class:`RecordingMaxima`, fitted to the streams
    themselves: recording offsets plus excursions) gives ``P(block max > L)``; counting at
    most one alert per block (an alert that spans blocks is counted in each: conservative),
    ``alerts per day = P(block max > L) * blocks per day``. The level solves it for the
    target; the model's tail is the extrapolation beyond the audio available.

    Parameters
    ----------
    streams : sequence of array_like
        Out-of-fold window scores of continuous stretches of normal audio, one array
        per stretch, one score per hop, as the monitor scores them.
    rule : AlertRule
    false_alarms_per_day : float
        Target false alerts per day of monitoring normal sound.
    block : int
        Windows per block: the windows that share audio (window length / hop).
    confidence : float
        0 (default): the point estimate; else the level's upper confidence bound.
    audio_seconds : float or None
        Seconds of audio the streams come from (default: windows x hop).
    scale : {"positive", "z"}
        The window score's scale (the detector kind's ``score_scale``): the block maxima
        get a gamma (``positive``) or :class:`RecordingMaxima` (``z``).
    components : int
        ``z`` scale: the window score is the largest of this many standardised parts (the
        detector kind's ``score_components``); it shapes the tail where every stream is
        one window long (:class:`RecordingMaxima`).

    Returns
    -------
    dict with ``value`` (the window level), ``method``, ``n`` (block maxima it rests on),
    ``n_windows``, ``audio_seconds``, ``expected_false_alarms_per_day`` (the model's rate at
    ``value``), ``expected_false_alarms_per_day_with_fit_uncertainty`` (for :class:`RecordingMaxima`:
    the same averaged over the uncertainty of the recordings' spread; else ``None``),
    ``observed_alerts`` (episodes :class:`AlertCounter` opens on the streams at ``value``),
    ``tail`` (the fitted model), ``gamma`` (the same, for a gamma), ``scale``,
    ``rule``, ``block`` and ``warnings``.
    """
    target = float(false_alarms_per_day)
    if not target > 0:
        raise ConfigError(f"false alarms per day must be > 0, not {false_alarms_per_day!r}")
    streams = [np.asarray(s, dtype=np.float64) for s in streams if np.size(s)]
    streams = [s[np.isfinite(s)] for s in streams]
    streams = [s for s in streams if s.size]
    n_windows = int(sum(s.size for s in streams))
    if n_windows == 0:
        raise ConfigError("cannot set a live alert level from zero window scores")
    block = max(1, int(block))
    maxima = block_maxima(streams, rule, block=block)
    warnings = []
    audio = float(audio_seconds) if audio_seconds is not None else n_windows * rule.hop_seconds
    if maxima.size < MIN_SCORES:
        warnings.append(f"the live alert level rests on only {maxima.size} blocks of audio one window long: its "
                        "alert rate is a guess")
    if audio < MIN_AUDIO_SECONDS:
        warnings.append(f"only {audio / 60:.1f} min of normal audio: false alerts per day are extrapolated "
                        "far beyond it; train on more minutes")
    if scale == "z":  # offsets across recordings + excursions within them (RecordingMaxima)
        tail = RecordingMaxima.fit_streams(streams, rule, block=block, components=components)
    else:
        tail = maxima_tail_model(scale).fit(maxima)
    blocks_per_day = rule.windows_per_day / block
    per_block = min(target / blocks_per_day, 1.0)
    value = tail.isf(per_block, confidence=confidence)
    expected = float(tail.sf(value) * blocks_per_day)
    uncertain = None
    if isinstance(tail, RecordingMaxima):  # the point estimate's promise, and what the fit's uncertainty makes of it
        uncertain = float(tail.sf_with_fit_uncertainty(value) * blocks_per_day)
        if uncertain > FIT_UNCERTAINTY_WARN * max(expected, target):
            warnings.append(f"the live level rests on {tail.n_recordings} recordings: with the uncertainty of the "
                            f"spread fitted to them, expect about {uncertain:.2g} false alerts a day (the fit's point "
                            f"estimate: {expected:.2g}); more recordings of normal running (other days) tighten it")
    method = _LIVE_METHODS.get(tail.family, f"{tail.family} fitted to block maxima of the k-th largest of n window "
                                            "scores")
    if isinstance(tail, RecordingMaxima) and not math.isfinite(tail.within_scale):
        method = ("every recording one window long: the window scores' law across recordings, "
                  + (f"the largest of {tail.components} normal parts (maximum likelihood)" if tail.components > 1
                     else "a normal"))
    observed = sum(count_alerts(s, value, k=rule.k, n=rule.n, quiet_windows=rule.quiet_windows) for s in streams)
    return {"value": float(value),
            "method": method, "scale": scale,
            "n": int(maxima.size), "n_windows": n_windows, "n_streams": len(streams), "audio_seconds": float(audio),
            "block": block, "confidence": float(confidence),
            "target_false_alarms_per_day": target, "expected_false_alarms_per_day": expected,
            "expected_false_alarms_per_day_with_fit_uncertainty": uncertain,
            "observed_alerts": int(observed), "tail": tail.to_dict(),
            "gamma": tail.to_dict() if isinstance(tail, GammaTail) else None,
            "rule": dataclasses.asdict(rule), "components": int(components), "warnings": warnings}


_LIVE_METHODS = {RecordingMaxima.family: "block maxima of the k-th largest of n window scores: a normal across "
                 "recordings (each one's median) plus a Gumbel of the excursions above it within a recording"}


def expected_alerts_per_day(calibration: dict, level: float) -> float:
    """The live model's false alerts per day at another window ``level`` (same rule and blocks)."""
    tail = tail_from_dict(calibration.get("tail") or calibration["gamma"])
    rule = AlertRule(**calibration["rule"])
    return float(tail.sf(level) * rule.windows_per_day / calibration["block"])


# --------------------------------------------------------------------------------------
# operating state: is the machine running at all?
# --------------------------------------------------------------------------------------
def block_levels_db(y, *, sr: int, block_seconds: float = LEVEL_BLOCK_SECONDS) -> np.ndarray:
    """RMS level (dBFS) of consecutive blocks of a signal, shape ``(n_blocks,)`` (at least one)."""
    y = np.asarray(y)
    b = max(1, int(round(block_seconds * sr)))
    n = y.size // b
    if n == 0:
        return np.array([10 * np.log10(np.mean(np.square(y, dtype=np.float64)) + 1e-20)])
    # Sums of squares as row dot products (no squared copy of the audio: a fifth of the time,
    # which a scan pays for every file); float32 sums of 8,000 squares err ~1e-6 dB.
    rows = y[: n * b].reshape(n, b)
    # Integer samples would overflow their own squares: summed in float64, buffer by buffer
    # (no float64 copy of an hour of audio).
    wide = {} if rows.dtype in (np.float32, np.float64) else {"dtype": np.float64, "casting": "safe"}
    ms = np.einsum("ij,ij->i", rows, rows, **wide).astype(np.float64) / b
    return 10 * np.log10(ms + 1e-20)


def level_profile(levels_db, *, margin_db: float = STOPPED_MARGIN_DB) -> dict:
    """The training audio's level distribution and the level below which the machine counts as stopped.

    ``stopped_below_db`` = the quietest 1 % of training blocks minus ``margin_db``.
    """
    lv = _finite(levels_db)
    q = np.percentile(lv, [0, 1, 50, 99, 100])
    return {"block_seconds": LEVEL_BLOCK_SECONDS, "n_blocks": int(lv.size), "min_db": float(q[0]),
            "p1_db": float(q[1]), "median_db": float(q[2]), "p99_db": float(q[3]), "max_db": float(q[4]),
            "margin_db": float(margin_db), "stopped_below_db": float(q[1] - margin_db)}


def window_level_db(y, *, sr: int) -> float:
    """A window's level for the operating-state check: the median of its 0.5 s block levels.

    The median ignores a knock or two in an otherwise silent window.
    """
    return float(np.median(block_levels_db(y, sr=sr)))


def machine_stopped(level_db: float, profile: dict, *, was_stopped: bool = False, hysteresis_db: float = 3.0) -> bool:
    """Whether a window at ``level_db`` means the machine is stopped.

    Stopped below ``stopped_below_db``; once stopped, running again only above it
    plus ``hysteresis_db`` (no flapping at the border).
    """
    limit = float(profile["stopped_below_db"]) + (hysteresis_db if was_stopped else 0.0)
    return bool(level_db < limit)
