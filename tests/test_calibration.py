"""Calibration mathematics on synthetic scores: each decision unit's threshold holds its promised rate.

The generators here stand in for out-of-fold scores of normal sound: what matters is that a
threshold fitted to a sample of them keeps its promise on fresh draws of the same process.
"""

from __future__ import annotations

import numpy as np
import pytest

from machine_monitor.errors import ConfigError
from machine_monitor.threshold import (
    AlertCounter,
    AlertRule,
    clip_calibration,
    count_alerts,
    group_folds,
    groups_from_paths,
    kth_of_last_n,
    level_profile,
    live_calibration,
    long_file_calibration,
    machine_stopped,
    worst_window_threshold,
)


def _moving_average(rng, n, span=20):
    """Standardised window scores of overlapping windows: a moving average of normal noise (sd 1)."""
    return np.convolve(rng.standard_normal(n + span - 1), np.ones(span) / np.sqrt(span), mode="valid")


def _normal_scores(rng, size):
    """Mahalanobis-like scores of normal sound: a chi distribution with 16 degrees of freedom, x 10."""
    return 10 * np.sqrt(rng.chisquare(16, size))


# -- clip ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip_threshold_keeps_its_false_alarm_rate_on_fresh_normal_scores(seed):
    rng = np.random.default_rng(seed)
    cal = clip_calibration(_normal_scores(rng, 60), rate=0.05)
    fresh = _normal_scores(rng, 20_000)
    fa = np.mean(fresh > cal["value"])
    assert cal["n"] == 60 and cal["expected_false_alarm_rate"] == 0.05 and cal["method"] == "gamma"
    assert 0.015 <= fa <= 0.11, f"promised 5 %, got {fa:.3f} at threshold {cal['value']:.1f}"
    assert not cal["warnings"]


def test_the_confidence_bound_sits_above_the_point_estimate_and_more_so_with_fewer_scores():
    rng = np.random.default_rng(7)
    big, small = _normal_scores(rng, 400), _normal_scores(rng, 15)
    margin = []
    for s in (big, small):
        bound, point = clip_calibration(s)["value"], clip_calibration(s, confidence=0)["value"]
        assert bound > point
        margin.append(bound / point)
    assert margin[1] > margin[0]


def test_clip_threshold_from_few_scores_warns_loudly():
    cal = clip_calibration(_normal_scores(np.random.default_rng(0), 6))
    assert cal["n"] == 6
    assert any("only 6" in w for w in cal["warnings"])


def test_clip_threshold_from_two_scores_is_their_maximum_and_says_so():
    cal = clip_calibration([1.0, 2.0])
    assert cal["value"] == 2.0 and cal["method"] == "max"
    assert any("fewer than 3" in w for w in cal["warnings"])


def test_a_group_that_scores_above_the_threshold_out_of_fold_is_reported():
    rng = np.random.default_rng(0)
    scores = np.r_[_normal_scores(rng, 40), _normal_scores(rng, 10) + 200]
    groups = ["a"] * 20 + ["b"] * 20 + ["c"] * 10
    cal = clip_calibration(scores, groups=groups)
    assert any("sessions differ" in w for w in cal["warnings"])
    quiet = clip_calibration(_normal_scores(rng, 50), groups=groups)
    assert not any("sessions differ" in w for w in quiet["warnings"])


def _fused_z_scores(rng, size):
    """A standardised fused score (the default detector's): the largest of 4 standard normal member z."""
    return rng.standard_normal((4, *np.atleast_1d(size))).max(axis=0)


def test_z_scale_clip_threshold_is_a_normal_prediction_bound_with_about_the_promised_rate():
    # Standardised scores (negative too) get a normal tail at its predictive quantile, not a gamma:
    # averaged over many small training sets, the share of fresh scores above it is about the rate.
    rng = np.random.default_rng(0)
    fa, ratio = [], []
    for _ in range(60):
        cal = clip_calibration(_fused_z_scores(rng, 30), rate=0.01, scale="z")
        fresh = _fused_z_scores(rng, 20_000)
        fa.append(np.mean(fresh > cal["value"]))
        ratio.append(cal["value"] / np.max(fresh[:30]))
    assert cal["method"] == "normal" and cal["scale"] == "z" and cal["gamma"] is None
    assert "expected" in cal["promise"]
    assert 0.004 <= np.mean(fa) <= 0.025, np.mean(fa)
    # It stays near the data: a bound, not an extrapolation far beyond the scores it rests on.
    assert np.median(ratio) < 1.5


def test_z_scale_bound_grows_as_scores_get_fewer_and_an_unknown_scale_is_refused():
    rng = np.random.default_rng(1)
    s = _fused_z_scores(rng, 400)
    few, many = clip_calibration(s[:12], scale="z"), clip_calibration(s, scale="z")
    t = [c["tail"] for c in (few, many)]
    assert (few["value"] - t[0]["mean"]) / t[0]["sd"] > (many["value"] - t[1]["mean"]) / t[1]["sd"]
    with pytest.raises(ConfigError):
        clip_calibration(s, scale="decibels")


def test_z_scale_bound_counts_independent_recordings_not_windows():
    # 14 window scores from 6 recordings are not 14 independent scores: a higher, wider bound.
    s = _fused_z_scores(np.random.default_rng(4), 14)
    windows, recordings = clip_calibration(s, scale="z"), clip_calibration(s, scale="z", n_eff=6)
    assert recordings["value"] > windows["value"] and recordings["tail"]["n_eff"] == 6 and recordings["n"] == 14


def test_z_scale_long_file_threshold_round_trips_through_its_dict():
    rng = np.random.default_rng(2)
    cal = long_file_calibration(_fused_z_scores(rng, 200), rate=0.05, scale="z")
    t = [worst_window_threshold(cal, n) for n in (1, 10, 100)]
    assert t == sorted(t) and cal["tail"]["family"] == "normal"
    files = _fused_z_scores(rng, (100, 2000)).max(axis=0)
    assert 0.01 <= np.mean(files > t[2]) <= 0.15


# -- long file ---------------------------------------------------------------------------
def test_worst_window_threshold_grows_with_the_number_of_windows_and_keeps_the_file_rate():
    rng = np.random.default_rng(1)
    cal = long_file_calibration(_normal_scores(rng, 300), rate=0.05)
    t = [worst_window_threshold(cal, n) for n in (1, 10, 100, 1000)]
    assert t == sorted(t) and t[0] < t[-1]
    # Files of 100 independent normal windows: the share whose worst window is flagged ~ 5 %.
    files = _normal_scores(rng, (4000, 100)).max(axis=1)
    fa = np.mean(files > t[2])
    assert 0.015 <= fa <= 0.12, fa
    # The clip threshold applied to those worst windows would flag most files.
    assert np.mean(files > t[0]) > 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_long_files_worst_window_of_a_fused_maximum_keeps_the_file_rate(seed):
    # Window scores that are the largest of 4 parts (the default detector's fused score), from
    # 300 one-window recordings; fresh normal files of 360 windows (an hour of 10 s windows).
    # The worst of 360 windows is a far quantile: a normal fitted to the maxima flags 4-10 % of
    # the files where 1 % was promised, the law of the largest of 4 parts about 1 %.
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.2, 1.0, (300, 4)).max(axis=1)
    worst = rng.normal(0.2, 1.0, (4000, 360, 4)).max(axis=(1, 2))
    fused = long_file_calibration(scores, rate=0.01, scale="z", components=4)
    plain = long_file_calibration(scores, rate=0.01, scale="z")
    assert fused["tail"]["components"] == 4 and plain["tail"]["components"] == 1
    assert 0.01 / 3 <= np.mean(worst > worst_window_threshold(fused, 360)) <= 0.02
    assert np.mean(worst > worst_window_threshold(plain, 360)) > 0.03
    # Near the clip level the two laws nearly agree: it is the far tail that differs.
    assert worst_window_threshold(fused, 1) == pytest.approx(worst_window_threshold(plain, 1), abs=0.25)


def test_worst_window_threshold_never_goes_below_the_floor():
    cal = long_file_calibration(_normal_scores(np.random.default_rng(2), 100), floor=1e6)
    assert worst_window_threshold(cal, 1) == 1e6


# -- live --------------------------------------------------------------------------------
def _overlapping_stream(rng, n, span=20):
    """Window scores of a sliding window that overlaps ``span`` hops: a moving average, strongly dependent."""
    x = rng.exponential(1.0, n + span - 1)
    return np.convolve(x, np.ones(span) / span, mode="valid") * 10


def test_alert_counter_opens_on_k_of_n_and_closes_after_the_quiet_period():
    c = AlertCounter(3, 5, quiet_windows=4)
    flags = [1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 1]
    events = [c.update(bool(f)) for f in flags]
    assert events.index("open") == 6  # windows 2, 5, 6 are anomalous: 3 of the last 5
    assert events.index("close") == 12  # 4 quiet windows after window 8
    assert events.count("open") == 1
    assert count_alerts(np.array(flags, float), 0.5, k=3, n=5, quiet_windows=4) == 1


def test_kth_of_last_n_is_above_a_level_exactly_when_k_of_the_last_n_are():
    rng = np.random.default_rng(3)
    s = rng.normal(size=200)
    m = kth_of_last_n(s, k=3, n=5)
    for t in range(200):
        last = s[max(0, t - 4): t + 1]
        assert (m[t] > 0.5) == (np.sum(last > 0.5) >= 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_live_level_gives_about_the_target_alerts_per_day_on_a_long_normal_stream(seed):
    rng = np.random.default_rng(seed)
    rule = AlertRule(k=3, n=5, quiet_windows=20, hop_seconds=0.5)
    # 40 min of training audio in 8 stretches; target 100 false alerts a day (so a few days show it).
    train = [_overlapping_stream(rng, 600) for _ in range(8)]
    cal = live_calibration(train, rule, false_alarms_per_day=100.0, block=20)
    assert cal["n_windows"] == 4800 and cal["audio_seconds"] == 2400.0
    days = 4
    fresh = _overlapping_stream(rng, int(days * rule.windows_per_day))
    per_day = count_alerts(fresh, cal["value"], k=3, n=5, quiet_windows=20) / days
    assert 100 / 3 <= per_day <= 100 * 3, f"target 100/day, measured {per_day:.0f}/day"
    assert cal["expected_false_alarms_per_day"] == pytest.approx(100.0, rel=1e-3)
    assert cal["n"] == 8 * 30  # block maxima of M (598 values a stream) over 20-window blocks: no shared audio
    bound = live_calibration(train, rule, false_alarms_per_day=100.0, block=20, confidence=0.9)
    assert bound["value"] > cal["value"]


def test_z_scale_live_level_models_excursions_with_a_gumbel_and_errs_high():
    # Standardised window scores (a moving average of normal noise: overlapping windows, negative
    # too), one process for every recording: the excursions within recordings get a Gumbel;
    # normal maxima are lighter-tailed than a Gumbel, so the level errs high: fewer false
    # alerts than the target, never many more.
    rng = np.random.default_rng(0)
    rule = AlertRule(k=3, n=5, quiet_windows=20, hop_seconds=0.5)

    train = [_moving_average(rng, 600) for _ in range(8)]
    cal = live_calibration(train, rule, false_alarms_per_day=100.0, block=20, scale="z")
    assert cal["scale"] == "z" and cal["tail"]["family"] == "recording-normal+gumbel" and cal["gamma"] is None
    assert cal["tail"]["n_recordings"] == 8 and cal["tail"]["n_within"] == 8 * 30
    assert cal["expected_false_alarms_per_day"] == pytest.approx(100.0, rel=1e-3)
    days = 4
    per_day = count_alerts(_moving_average(rng, int(days * rule.windows_per_day)), cal["value"], k=3, n=5,
                           quiet_windows=20) / days
    assert per_day <= 100 * 3, per_day
    assert cal["value"] < 2 * max(s.max() for s in train)  # near the data, not far beyond it
    levels = [live_calibration(train, rule, false_alarms_per_day=r, block=20, scale="z")["value"] for r in (10, 0.1)]
    assert levels[0] < levels[1]


def test_z_scale_live_level_draws_a_new_offset_per_recording_not_per_block():
    # Recordings of one machine sit at different levels (sessions): six of them, each offset
    # from a normal. One Gumbel on the pooled block maxima reads that spread as the tail of
    # every block and extrapolates it exponentially; the recording model draws an offset per
    # recording (a normal) and extrapolates only the excursions within one. Fresh days, each
    # at a fresh offset, stay at or below the target, and the level sits nearer the data.
    from machine_monitor.threshold import GumbelTail, block_maxima

    rng = np.random.default_rng(3)
    rule = AlertRule(k=3, n=5, quiet_windows=20, hop_seconds=0.5)
    train = [o + _moving_average(rng, 300) for o in rng.normal(0.0, 1.0, 6)]
    target = 1.0
    cal = live_calibration(train, rule, false_alarms_per_day=target, block=20, scale="z")
    assert cal["tail"]["n_recordings"] == 6 and cal["tail"]["offset_sd"] > 0.5
    pooled = GumbelTail.fit(block_maxima(train, rule, block=20)).isf(target / (rule.windows_per_day / 20))
    assert cal["value"] < pooled - 1.0
    days = 30
    alerts = sum(count_alerts(o + _moving_average(rng, int(rule.windows_per_day)), cal["value"], k=3, n=5,
                              quiet_windows=20) for o in rng.normal(0.0, 1.0, days))
    assert alerts / days <= 3 * target


def test_z_scale_live_level_from_one_window_recordings_is_the_offsets_normal_quantile():
    # Ten-second recordings, one window each (the valve split): no excursion can be seen within
    # a recording, so the level is the normal quantile of the recordings' scores (a score that is
    # not the largest of several parts; for one that is, see the next test).
    from scipy import stats

    rng = np.random.default_rng(5)
    rule = AlertRule(k=3, n=5, quiet_windows=20, hop_seconds=0.5)
    scores = rng.normal(1.0, 0.8, 50)
    cal = live_calibration([[s] for s in scores], rule, false_alarms_per_day=0.1, block=20, scale="z")
    p = 0.1 / (rule.windows_per_day / 20)
    assert cal["value"] == pytest.approx(scores.mean() + scores.std(ddof=1) * stats.norm.isf(p), rel=1e-9)
    assert cal["tail"]["n_within"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_window_recordings_of_a_fused_maximum_get_the_maximums_tail_and_keep_the_target(seed):
    # The default detector's window score is the largest of 4 standardised parts. From
    # one-window recordings the level is a one-in-10^5 quantile of that score: a normal fitted
    # to the maxima matches their bulk but thins that far tail, and fresh normal sound alerts
    # 7-18 times the target; the law of the largest of 4 normals keeps the promise.
    rng = np.random.default_rng(seed)
    rule = AlertRule(k=3, n=5, quiet_windows=20, hop_seconds=0.5)
    p = 0.1 / (rule.windows_per_day / 20)  # per block, for 0.1 false alerts a day
    scores = rng.normal(0.2, 1.0, (300, 4)).max(axis=1)
    fresh = rng.normal(0.2, 1.0, (2_000_000, 4)).max(axis=1)
    fused = live_calibration([[s] for s in scores], rule, false_alarms_per_day=0.1, block=20, scale="z",
                             components=4)
    plain = live_calibration([[s] for s in scores], rule, false_alarms_per_day=0.1, block=20, scale="z")
    assert fused["components"] == 4 and "largest of 4 normal parts" in fused["method"]
    assert fused["expected_false_alarms_per_day"] == pytest.approx(0.1, rel=1e-3)
    assert 1 / 3 <= np.mean(fresh > fused["value"]) / p <= 3
    assert np.mean(fresh > plain["value"]) / p > 5
    # The fitted law round-trips through model.json.
    from machine_monitor.threshold import tail_from_dict

    tail = tail_from_dict(fused["tail"])
    assert tail.components == 4 and tail.isf(p) == pytest.approx(fused["value"], rel=1e-9)


def test_the_rate_with_the_fits_uncertainty_says_what_the_point_estimate_promises_too_little():
    # 50 one-window recordings (the valve split's shape), repeated 150 times: the level is set at
    # the point estimate of 0.1 alerts a day, but the spread fitted to 50 maxima is often too
    # small, and on average fresh normal sound alerts several times the target. The rate averaged
    # over the fit's uncertainty says so (to within a factor 2); with 2,000 recordings it agrees.
    from scipy import special

    rng = np.random.default_rng(3)
    rule = AlertRule(k=3, n=5, quiet_windows=20, hop_seconds=0.5)
    per_day = rule.windows_per_day / 20
    true, claimed = [], []
    for _ in range(150):
        cal = live_calibration([[s] for s in rng.normal(0.0, 1.0, (50, 4)).max(axis=1)], rule,
                               false_alarms_per_day=0.1, block=20, scale="z", components=4)
        true.append(-np.expm1(4 * special.log_ndtr(cal["value"])) * per_day)  # the parts' true law: N(0, 1)
        claimed.append(cal["expected_false_alarms_per_day_with_fit_uncertainty"])
    assert np.mean(true) > 3 * 0.1  # the point estimate's promise, broken on average
    assert 0.5 < np.mean(claimed) / np.mean(true) < 2
    many = live_calibration([[s] for s in rng.normal(0.0, 1.0, (2000, 4)).max(axis=1)], rule,
                            false_alarms_per_day=0.1, block=20, scale="z", components=4)
    assert many["expected_false_alarms_per_day_with_fit_uncertainty"] < 0.2 and not many["warnings"]


def test_max_normal_fit_recovers_the_parts_law_and_is_the_normal_for_one_part():
    from machine_monitor.threshold import max_normal_fit

    rng = np.random.default_rng(7)
    mean, sd = max_normal_fit(rng.normal(-0.5, 2.0, (4000, 4)).max(axis=1), 4)
    assert mean == pytest.approx(-0.5, abs=0.15) and sd == pytest.approx(2.0, rel=0.05)
    x = rng.normal(3.0, 0.5, 100)
    assert max_normal_fit(x, 1) == pytest.approx((x.mean(), x.std()))
    with pytest.raises(ConfigError, match="3 distinct"):
        max_normal_fit([1.0, 1.0, 2.0], 4)


def test_live_level_rises_as_the_target_rate_falls():
    rng = np.random.default_rng(4)
    rule = AlertRule(k=3, n=5, quiet_windows=60, hop_seconds=0.512)
    train = [_overlapping_stream(rng, 700) for _ in range(3)]
    levels = [live_calibration(train, rule, false_alarms_per_day=r, block=20)["value"] for r in (10, 1, 0.1, 0.01)]
    assert levels == sorted(levels)


def test_live_level_from_little_audio_warns():
    rule = AlertRule(k=3, n=5, quiet_windows=60, hop_seconds=0.512)
    cal = live_calibration([_overlapping_stream(np.random.default_rng(5), 100)], rule)
    assert any("min of normal audio" in w for w in cal["warnings"])


# -- groups --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_group_folds_never_split_a_group_and_balance_the_folds(seed):
    rng = np.random.default_rng(seed)
    groups = [f"session{g}" for g in rng.integers(0, 12, 80)]
    fold = group_folds(groups, n_folds=5)
    for g in set(groups):
        assert len({fold[i] for i, h in enumerate(groups) if h == g}) == 1, g
    assert set(fold) == set(range(5))
    sizes = np.bincount([fold[groups.index(g)] for g in set(groups)])
    assert sizes.max() - sizes.min() <= 1  # groups dealt evenly
    assert (group_folds(list(reversed(groups)))[::-1] == fold).all()  # a function of the groups, not their order


def test_group_folds_with_fewer_groups_than_folds_use_one_fold_per_group():
    fold = group_folds(["a", "a", "b", "b", "b"], n_folds=5)
    assert sorted(set(fold)) == [0, 1] and fold[0] == fold[1] != fold[2]
    with pytest.raises(ConfigError, match="at least 2 groups"):
        group_folds(["a", "a"], n_folds=5)


def test_groups_from_paths_by_file_folder_and_pattern():
    paths = ["d/s1/a.wav", "d/s1/b.wav", "d/s2/c.wav", "x_2021_01.wav", "x_2021_02.wav", "y.wav"]
    assert len(set(groups_from_paths(paths))) == 6
    by_folder = groups_from_paths(paths, "folder")
    assert by_folder[0] == by_folder[1] != by_folder[2]
    by_day = groups_from_paths(paths, r"_(\d{4})_")
    assert by_day[3] == by_day[4] == "2021" and len(set(by_day)) == 5
    with pytest.raises(ConfigError, match="not a regular expression"):
        groups_from_paths(paths, "(")


# -- operating state ---------------------------------------------------------------------------
def test_block_levels_are_rms_dbfs_of_half_second_blocks_for_float_and_integer_samples():
    from machine_monitor.threshold import block_levels_db

    rng = np.random.default_rng(0)
    y = np.concatenate([0.1 * rng.standard_normal(8000), 0.01 * rng.standard_normal(8000)]).astype(np.float32)
    exact = 10 * np.log10(np.mean(y.astype(np.float64).reshape(2, 8000) ** 2, axis=1))
    np.testing.assert_allclose(block_levels_db(y, sr=16_000), exact, atol=1e-4)  # float32 sums: ~1e-6 dB
    assert block_levels_db(y, sr=16_000) == pytest.approx([-20.0, -40.0], abs=0.2)
    # Integer samples (an int16 file read raw) must not overflow their own squares.
    full_scale = np.full(16_000, 30_000, dtype=np.int16)
    np.testing.assert_allclose(block_levels_db(full_scale, sr=16_000), 20 * np.log10(30_000), atol=1e-6)


def test_machine_stopped_below_the_training_levels_with_hysteresis():
    prof = level_profile(np.random.default_rng(0).normal(-28, 0.5, 500))
    assert prof["stopped_below_db"] == pytest.approx(prof["p1_db"] - 10)
    assert machine_stopped(-52.0, prof)
    assert not machine_stopped(-27.0, prof)
    border = prof["stopped_below_db"] + 1.0
    assert not machine_stopped(border, prof) and machine_stopped(border, prof, was_stopped=True)
