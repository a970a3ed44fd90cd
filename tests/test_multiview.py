"""The multi-view detector (``detectors/multiview.py``): members, standardisation, fusion,
out-of-fold parts, the model directory and ``explain``.

Small SYNTHETIC machines (``synth.mechanism_sound``, 3 s clips) and few epochs: these tests
check behaviour; ``benchmarks/bench_generalisation.py`` measures accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from machine_monitor.detectors.base import BaseDetector
from machine_monitor.detectors.multiview import (
    VIEWS,
    MultiViewDetector,
    decorrelation,
    fuse,
    robust_location_scale,
    standardise,
)
from machine_monitor.detectors.registry import make_detector
from machine_monitor.errors import ConfigError, ModelError
from machine_monitor.features import logmel_frames
from machine_monitor.synth import _KINDS, mechanism_sound

SECONDS = 3.0
FAST = {"folds": 3, "epochs": 60, "patience": 10, "frame_epochs": 3, "frame_patience": 2, "seed": 0}


def clip(seed: int, mechanism: str | None = None, severity: float = 1.0) -> np.ndarray:
    return mechanism_sound(SECONDS, kind="hum", mechanism=mechanism, seed=seed, severity=severity)


@pytest.fixture(scope="module")
def train_clips() -> list[np.ndarray]:
    return [clip(100 + i) for i in range(9)]


@pytest.fixture(scope="module")
def groups() -> list[str]:
    return [f"rec{i // 3}" for i in range(9)]  # three recordings of three clips each


@pytest.fixture(scope="module")
def det(train_clips, groups) -> MultiViewDetector:
    return MultiViewDetector(**FAST).fit(train_clips, groups=groups)


# ------------------------------------------------------------ pure parts


def test_standardisation_is_robust_z_of_log_scores():
    ref = np.exp(np.r_[np.linspace(-1.0, 1.0, 99), 50.0])  # one wild training score
    loc, scale = robust_location_scale(ref)
    assert loc == pytest.approx(0.0, abs=0.02)  # the median, hardly moved by the outlier
    assert scale == pytest.approx(1.0 / 1.349, rel=0.03)  # the IQR of the rest, not the outlier's pull
    assert standardise([np.exp(loc + 2 * scale)], loc, scale)[0] == pytest.approx(2.0)
    # A member whose normal scores do not vary gets a floor on its scale, not z = inf.
    assert robust_location_scale(np.full(10, 3.0))[1] > 0


def test_a_folds_scale_from_a_few_recordings_is_not_near_zero():
    """Three training recordings: the two left outside a fold may score alike by chance; their
    near-zero spread must not turn that fold's out-of-fold scores into z of hundreds."""
    from machine_monitor.detectors.multiview import FOLD_SCALE_FLOOR, _Member

    m = _Member("peak", None)
    m.oof_scores_ = [np.exp(np.array([v])) for v in (0.0, 0.001, 2.0)]  # one span per recording
    m.set_standardisation(np.array([0, 1, 2]))
    assert min(m.fold_scale_) >= FOLD_SCALE_FLOOR * m.scale_
    assert np.abs(m.oof_z()).max() < 10
    # Many recordings: each fold's own scale, untouched by the floor.
    rng = np.random.default_rng(0)
    m.oof_scores_ = [np.exp(rng.normal(size=1)) for _ in range(50)]
    m.set_standardisation(np.arange(50) % 5)
    for k, scale in enumerate(m.fold_scale_):
        rest = np.concatenate([m.oof_scores_[i] for i in range(50) if i % 5 != k])
        assert scale == pytest.approx(robust_location_scale(rest)[1])


def test_each_fold_network_is_centred_on_the_clips_outside_its_fold():
    """A fold network reads and writes the shared units, but learnt on rows centred on the
    mean of the clips outside its fold only: its fold's clips never set its centre."""
    import copy

    import torch

    from machine_monitor.autoencoder import DenseAutoencoder, NetworkConfig, fold_centring, fold_means

    rows = [np.full((2, 3), 1.0), np.full((3, 3), 0.0), np.full((1, 3), 2.0)]
    np.testing.assert_allclose(fold_means(rows, np.array([0, 1, 1])), [[0.5] * 3, [1.0] * 3])
    torch.manual_seed(0)
    net = DenseAutoencoder(NetworkConfig(3, (4,), 2)).eval()
    centred = fold_centring(copy.deepcopy(net), np.array([0.5, -1.0, 2.0]))
    u = torch.randn(5, 3)
    c = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(centred(u), net(u - c) + c)


def test_the_clip_threshold_keeps_its_promise_on_new_normal_audio():
    """The demo machine (40 clips of 3 s to train, 200 new normal clips, seeds disjoint): the
    default's clip threshold promises 1 % of normal clips flagged. Each fold network centred
    on every training clip (its own fold's included) scored the fold's clips as more normal
    than new audio: 6 of the 200 flagged (3 %); centred without its fold, 2 (1 %)."""
    from machine_monitor.synth import machine_sound

    train = [(machine_sound(3.0, seed=20_000 + i), 16_000) for i in range(40)]
    det = MultiViewDetector(seed=0).fit(train, groups=[f"rec{i}" for i in range(40)])
    assert det.calibration_["clip"]["expected_false_alarm_rate"] == pytest.approx(0.01)
    new = [machine_sound(3.0, seed=10_000 + i) for i in range(200)]
    flagged = sum(det.score_signal(y.astype(np.float32)) > det.threshold_value_ for y in new)
    assert flagged <= 3


def test_fusion_rules():
    z = np.array([[0.0, 5.0, -1.0], [1.0, 0.0, -2.0], [3.0, 1.0, -3.0]])  # (members, clips)
    np.testing.assert_allclose(fuse(z, "max"), [3.0, 5.0, -1.0])
    np.testing.assert_allclose(fuse(z, "mean"), [4 / 3, 2.0, -2.0])
    np.testing.assert_allclose(fuse(z, "top2"), [2.0, 3.0, -1.5])
    np.testing.assert_allclose(fuse(z[:1], "top2"), z[0])  # one member: its own score
    with pytest.raises(ConfigError):
        fuse(z, "median")


def correlated_normal_z(rho: float, n: int = 400, seed: int = 0) -> np.ndarray:
    """``(4, n)`` standardised member scores of normal sound sharing one factor (correlation ``rho``)."""
    rng = np.random.default_rng(seed)
    return np.sqrt(rho) * rng.normal(size=(1, n)) + np.sqrt(1 - rho) * rng.normal(size=(4, n))


def test_decorrelation_gives_uncorrelated_unit_variance_components():
    z = correlated_normal_z(0.7)
    w = decorrelation(z)
    assert w.shape == (4, 4)
    np.testing.assert_allclose(np.cov(w @ z), np.eye(4), atol=0.12)  # on normal sound: uncorrelated, unit variance
    assert np.all(np.argmax(np.abs(w), axis=1) == np.arange(4))  # each component nearest its own member
    # Members that do not correlate: the components are the members' z themselves.
    np.testing.assert_allclose(decorrelation(correlated_normal_z(0.0)), np.eye(4), atol=0.12)
    # Many spans from few recordings: shrunk toward the identity, no component amplified wildly.
    few = decorrelation(z, n_recordings=4)
    assert np.abs(few).max() < np.abs(w).max() and np.linalg.norm(few, 2) < 1.5
    # Too few spans to estimate a correlation, or one member: the identity (and the members' mean).
    np.testing.assert_allclose(decorrelation(z[:, :2]), np.eye(4))
    np.testing.assert_allclose(decorrelation(z[:1]), [[1.0]])


def test_whitened_max_puts_one_views_fault_above_normal_sound_every_view_finds_unusual():
    """Real recordings raise every member's z together (another day, another gain): a plain
    maximum ranks such a normal clip above a fault that one view alone sees; once the members
    are decorrelated the fault stands out. A fault every view sees strongly still stands out."""
    w = decorrelation(correlated_normal_z(0.7))
    shifted_normal = np.array([[3.2], [2.8], [2.8], [2.8]])
    one_view_fault = np.array([[3.0], [0.0], [0.0], [0.0]])
    assert fuse(shifted_normal, "max") > fuse(one_view_fault, "max")
    assert fuse(one_view_fault, "whitened-max", whitening=w) > fuse(shifted_normal, "whitened-max", whitening=w)
    every_view_fault = np.full((4, 1), 10.0)  # a machine grown louder: seen by all, far beyond normal
    def wmax(z):
        return fuse(z, "whitened-max", whitening=w)[0]

    assert wmax(every_view_fault) > 2 * wmax(shifted_normal) and wmax(every_view_fault) > wmax(one_view_fault)
    with pytest.raises(ConfigError, match="whitening"):
        fuse(one_view_fault, "whitened-max")
    # A span infinitely far in two views stays infinitely far (not inf - inf = nan, never flagged).
    assert fuse(np.array([[np.inf], [np.inf], [0.2], [0.0]]), "whitened-max", whitening=w)[0] == np.inf


def test_with_too_few_spans_for_a_correlation_the_fusion_is_the_plain_maximum_everywhere():
    """Three one-span recordings: outside each fold two spans are left, too few to estimate a
    correlation from, so the out-of-fold scores are fused by the plain maximum; new audio must
    be fused the same way, or the threshold is fitted to another score."""
    det = MultiViewDetector(**{**FAST, "members": ("peak", "mean")}).fit([clip(100 + i) for i in range(3)])
    np.testing.assert_array_equal(det.whitening_, np.eye(2))
    assert all(np.array_equal(w, np.eye(2)) for w in det.fold_whitening_)


def test_one_recording_cut_into_clips_counts_as_one_recording_for_the_decorrelation(train_clips, monkeypatch):
    import machine_monitor.detectors.multiview as mv

    seen = []
    monkeypatch.setattr(mv, "decorrelation", lambda z, n=None: seen.append(n) or np.eye(z.shape[0]))
    MultiViewDetector(**{**FAST, "members": ("peak", "mean")}).fit(train_clips, groups=["same"] * len(train_clips))
    assert seen and set(seen) == {1}


@pytest.mark.parametrize("kwargs", [{"members": ("peak", "loud")}, {"members": ()}, {"members": ("std", "std")},
                                    {"fusion": "vote"}, {"folds": 1}])
def test_bad_parameters_are_refused_before_any_work(kwargs, train_clips):
    with pytest.raises(ConfigError):
        MultiViewDetector(**{**FAST, **kwargs}).fit(train_clips)


def test_one_recording_is_split_clip_by_clip_with_a_warning(train_clips, caplog):
    det = MultiViewDetector(**{**FAST, "members": ("mean",)}).fit(train_clips[:4], groups=["same"] * 4)
    assert "one group" in caplog.text
    assert sorted(det.member_folds_.tolist()) == [0, 0, 1, 2]


# ------------------------------------------------------------ fitting and scoring


def test_every_view_is_a_member_reading_one_log_mel(det):
    assert list(det.members_) == list(VIEWS)
    f = det.logmel(clip(7))
    assert f.shape[1] == det.feature_config.n_mels == det.reference_logmel_.shape[0]
    # Span views: one row per span (a 3 s clip is one span); the frame view: a window of 5 frames
    # of every mel every 8th frame.
    for name in ("peak", "mean", "std"):
        assert det.view_units(name, f).shape == (1, f.shape[1])
    assert det.frame_bands == 1
    assert det.view_units("frame", f).shape == (len(range(0, f.shape[0] - 4, 8)), 5 * f.shape[1])
    fmax = det.feature_config.fmax
    n_fft = det.feature_config.n_fft
    expected = np.mean([logmel_frames(clip(100 + i), n_fft=n_fft, fmax=fmax).mean(axis=0) for i in range(9)], axis=0)
    assert det.reference_logmel_ == pytest.approx(expected, abs=0.05)


def test_folds_keep_a_recording_on_one_side(det, groups):
    folds = det.member_folds_
    assert det.n_folds_ == 3
    for g in set(groups):
        assert len({folds[i] for i, h in enumerate(groups) if h == g}) == 1


def test_out_of_fold_scores_are_what_the_fold_parts_give(det, train_clips):
    """A training clip scored with only the parts blind to its fold reproduces its out-of-fold
    score: the calibration streams training audio through exactly these parts."""
    for i in (0, 4, 8):
        k = int(det.member_folds_[i])
        assert det.score_signal(train_clips[i], fold=k) == pytest.approx(det.train_scores_[i], rel=1e-4, abs=1e-4)
        assert det.window_scores(train_clips[i], fold=k) == pytest.approx(det.oof_window_scores_[i], rel=1e-4,
                                                                          abs=1e-4)
    # The decorrelation of the members' z used for fold k's scores was estimated without fold k.
    oof_z = np.stack([m.oof_z() for m in det.members_.values()])
    span_fold = np.repeat(det.member_folds_, [len(s) for s in det.oof_window_scores_])
    for k in range(det.n_folds_):  # two of the three recordings outside each fold
        np.testing.assert_allclose(det.fold_whitening_[k], decorrelation(oof_z[:, span_fold != k], 2))
    # The deployed model (every fold's parts) has heard the clips: it finds them more ordinary.
    heard = np.mean([det.score_signal(c) for c in train_clips])
    assert heard < np.mean([np.mean(s) for s in det.oof_window_scores_])
    with pytest.raises(ConfigError):
        det.window_scores(train_clips[0], fold=3)


def test_with_too_few_spans_the_bank_leaves_the_span_views_out_and_says_so(caplog, tmp_path):
    """Three clips of one span each: a fold leaves two spans, from which a span view's networks
    and covariance cannot be learnt (their out-of-fold scores then follow the seed, not the
    sound). The bank keeps the frame view, hundreds of rows a clip, and warns."""
    from machine_monitor.detectors.multiview import MIN_SPAN_ROWS

    clips = [clip(500 + i) for i in range(3)]
    with caplog.at_level("WARNING"):
        det = MultiViewDetector(**FAST).fit(clips)
    assert list(det.members_) == ["frame"] and det.score_components == 1
    said = [r.getMessage() for r in caplog.records]
    assert any("peak, mean, std views are left out" in m and f"the {MIN_SPAN_ROWS} a view" in m for m in said)
    back = BaseDetector.load(det.save(tmp_path / "thin"))
    assert list(back.members_) == ["frame"]
    np.testing.assert_allclose(back.score([clip(400)]), det.score([clip(400)]), rtol=1e-5)
    # A view asked for alone is kept (it is what the user chose to check), and so is a bank without the frame view.
    assert list(MultiViewDetector(**{**FAST, "members": ("mean",)}).fit(clips).members_) == ["mean"]
    assert list(MultiViewDetector(**{**FAST, "members": ("mean", "std")}).fit(clips).members_) == ["mean", "std"]


def test_with_few_recordings_each_fold_network_learns_its_chosen_epochs_from_every_clip_outside_the_fold(
        det, train_clips, groups):
    """Three recordings: holding clips out to stop early would leave a large share of them (with
    four, a whole session, chosen by the seed) unheard by the fold network. Early stopping
    chooses the epochs; the network then learns that many from every clip outside its fold
    (sensiml-fan, 6 recordings: clip thresholds 4.32 / 5.07 / 7.25 over seeds 0-2 before,
    4.47 / 4.85 / 5.62 after)."""
    from machine_monitor.detectors.base import REFIT_BELOW_RECORDINGS

    assert len(set(groups)) < REFIT_BELOW_RECORDINGS
    for m in det.members_.values():
        for k in range(det.n_folds_):
            hist = [h for h in m.history_ if h["fold"] == k]
            assert hist and all(h.get("refit") for h in hist)  # the network kept is the refitted one
            assert all("val_loss" not in h for h in hist)  # no clip held out any more
    # Ten recordings or more outside every fold (15 in 3 folds): early stopping's network is kept.
    many = MultiViewDetector(**{**FAST, "members": ("mean",)}).fit(train_clips + [clip(300 + i) for i in range(6)],
                                                                    groups=[f"r{i}" for i in range(15)])
    assert not any(h.get("refit") for h in many.members_["mean"].history_)
    assert all("val_loss" in h for h in many.members_["mean"].history_)


def test_calibration_uses_the_members_fold_parts(det):
    # No clones refitted: the calibration's out-of-fold scores come from the parts blind to each fold.
    assert "cross-fitted parts" in det.calibration_["how"]
    np.testing.assert_array_equal(det.fold_of_, det.member_folds_)


def test_fused_scores_are_calibrated_on_their_z_scale(det):
    # Fused scores are standardised (negative too): a normal prediction bound, not a gamma (issue 10).
    clip = det.calibration_["clip"]
    assert det.score_scale == "z" and clip["scale"] == "z" and clip["method"] == "normal"
    oof = det.val_scores_
    t = clip["tail"]
    assert t["n"] == oof.size and t["mean"] == pytest.approx(oof.mean()) and t["sd"] == pytest.approx(oof.std(ddof=1))
    assert det.calibration_["long_file"]["tail"]["family"] == "normal"
    # The fused score is the largest of the 4 members' parts: the live calibration's tail law knows it.
    assert det.score_components == 4 and det.calibration_["live"]["components"] == 4
    assert det.calibration_["long_file"]["tail"]["components"] == 4
    assert MultiViewDetector(fusion="mean").score_components == 1


def test_live_level_of_one_window_recordings_uses_the_maximums_law_and_keeps_it_when_re_set(det):
    # Every training clip is one live window: the level is a far quantile of the fused score's
    # own law (the largest of 4 parts); re-setting the level from the stored streams (the
    # monitor with another rule or rate, `threshold`) keeps that law.
    import copy

    live = det.calibration_["live"]
    assert live["tail"]["n_within"] == 0 and live["tail"]["components"] == 4
    again = copy.deepcopy(det).set_false_alarms_per_day(live["target_false_alarms_per_day"]).calibration_["live"]
    assert again["components"] == 4 and again["value"] == pytest.approx(live["value"], rel=1e-9)


def test_faults_score_higher_than_new_normal_clips(det):
    normal = det.score([clip(200 + i) for i in range(4)])
    faulty = det.score([clip(300 + i, "squeal", 3.0) for i in range(2)] + [clip(310, "level", 3.0)])
    assert roc_auc_score(np.r_[np.zeros(4), np.ones(3)], np.r_[normal, faulty]) == 1.0


def test_each_member_alone_is_that_views_detector(det, train_clips, groups):
    alone = MultiViewDetector(**{**FAST, "members": ("std",)}).fit(train_clips, groups=groups)
    y = clip(205, "modulation", 2.0)
    z = alone.member_z(alone.logmel(y))["std"]
    np.testing.assert_allclose(alone.window_scores(y), z)
    assert list(alone.members_) == ["std"]
    # ... and the same model as the std member inside the bank (what the benchmark's member rows rely on).
    np.testing.assert_allclose(z, det.member_z(det.logmel(y))["std"], rtol=1e-5)


# ------------------------------------------------------------ model directory and explain


def test_save_load_round_trip_records_members_and_fusion(det, tmp_path):
    path = det.save(tmp_path / "mv")
    m = json.loads((path / "model.json").read_text())
    assert m["detector"] == "multiview" and m["params"]["fusion"] == "whitened-max"
    assert [d["name"] for d in m["multiview"]["members"]] == list(VIEWS)
    assert m["multiview"]["fusion"] == "whitened-max" and m["multiview"]["folds"] == 3
    assert np.shape(m["multiview"]["whitening"]) == (4, 4) and np.shape(m["multiview"]["fold_whitening"]) == (3, 4, 4)
    back = BaseDetector.load(path)
    assert isinstance(back, MultiViewDetector)
    ys = [clip(400), clip(401, "knocks", 2.0)]
    np.testing.assert_allclose(back.score(ys), det.score(ys), rtol=1e-5)
    np.testing.assert_allclose(back.window_scores(ys[1], fold=2), det.window_scores(ys[1], fold=2), rtol=1e-5)
    np.testing.assert_array_equal(back.reference_logmel_, det.reference_logmel_)
    assert back.threshold_value_ == det.threshold_value_


def test_the_peak_views_pooling_is_recorded_and_a_model_saved_before_it_reads_the_maximum(det, tmp_path):
    from machine_monitor.features import peak_windows

    path = det.save(tmp_path / "mv")
    m = json.loads((path / "model.json").read_text())
    assert m["multiview"]["peak_pooling"] == {"decay": 0.3, "top": 8}
    del m["multiview"]["peak_pooling"]  # as written before the soft maximum
    (path / "model.json").write_text(json.dumps(m))
    old = BaseDetector.load(path)
    f = det.logmel(clip(402))
    cfg = det.feature_config
    np.testing.assert_array_equal(old.view_units("peak", f), peak_windows(f, context=cfg.context, stride=cfg.stride))
    assert not np.array_equal(det.view_units("peak", f), old.view_units("peak", f))
    m["multiview"]["peak_pooling"] = {"decay": 1.5, "top": 8}
    (path / "model.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="peak_pooling"):
        BaseDetector.load(path)


def test_the_frame_views_bands_are_recorded_and_a_model_saved_before_them_reads_mel_pairs(
        train_clips, tmp_path, monkeypatch):
    import machine_monitor.detectors.multiview as mv

    monkeypatch.setattr(mv, "FRAME_BANDS", 2)  # how models were fitted before: mels averaged in pairs
    old = MultiViewDetector(**{**FAST, "members": ("frame",)}).fit(train_clips)
    monkeypatch.undo()
    path = old.save(tmp_path / "mv")
    m = json.loads((path / "model.json").read_text())
    assert m["multiview"]["frame_bands"] == 2
    del m["multiview"]["frame_bands"]  # as written before the bands were recorded
    (path / "model.json").write_text(json.dumps(m))
    back = BaseDetector.load(path)
    assert back.frame_bands == 2 and MultiViewDetector().frame_bands == 1
    f = old.logmel(clip(403))
    assert back.view_units("frame", f).shape[1] == 5 * f.shape[1] // 2
    np.testing.assert_allclose(back.score([clip(403)]), old.score([clip(403)]), rtol=1e-5)
    m["multiview"]["frame_bands"] = 0
    (path / "model.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="frame_bands"):
        BaseDetector.load(path)


def test_a_model_json_without_its_whitening_is_refused(det, tmp_path):
    path = det.save(tmp_path / "mv")
    m = json.loads((path / "model.json").read_text())
    m["multiview"]["fold_whitening"] = m["multiview"]["fold_whitening"][:2]
    (path / "model.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="whitening"):
        BaseDetector.load(path)


def test_a_refitted_detector_scores_with_its_new_networks(train_clips):
    """The out-of-fold screening refits the same object: scores must come from the new fit."""
    again = MultiViewDetector(**{**FAST, "members": ("peak", "mean")}).fit(train_clips[:6])
    again.score_signal(clip(404))  # builds the batched copy of the first fit's networks
    again.fit(train_clips[3:])
    fresh = MultiViewDetector(**{**FAST, "members": ("peak", "mean")}).fit(train_clips[3:])
    assert again.score_signal(clip(404)) == pytest.approx(fresh.score_signal(clip(404)), rel=1e-5)


def test_a_model_saved_with_plain_max_fusion_still_scores_as_it_was_fitted(train_clips, groups, tmp_path):
    plain = MultiViewDetector(**{**FAST, "fusion": "max"}).fit(train_clips, groups=groups)
    back = BaseDetector.load(plain.save(tmp_path / "plain"))
    y = clip(403, "knocks", 2.0)
    z = plain.member_z(plain.logmel(y))
    np.testing.assert_allclose(back.window_scores(y), np.max(list(z.values()), axis=0), rtol=1e-5)


def test_a_model_json_whose_parameters_name_another_fusion_is_refused(det, tmp_path):
    path = det.save(tmp_path / "mv")
    m = json.loads((path / "model.json").read_text())
    m["params"]["fusion"] = "max"  # the threshold was fitted to whitened scores
    (path / "model.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="fusion"):
        BaseDetector.load(path)


def test_a_model_json_with_an_unknown_member_is_refused(det, tmp_path):
    path = det.save(tmp_path / "mv")
    m = json.loads((path / "model.json").read_text())
    m["multiview"]["members"][0]["name"] = "loudness"
    (path / "model.json").write_text(json.dumps(m))
    with pytest.raises(ModelError):
        BaseDetector.load(path)


def test_explain_says_which_view_and_which_bands(det):
    y = clip(500, "squeal", 4.0)
    ex = det.explain(y)
    assert ex["score"] == pytest.approx(det.score_signal(y))
    # Each view's decorrelated z (what the fusion takes the maximum of), and before decorrelation.
    assert set(ex["members"]) == set(ex["member_z"]) == set(VIEWS)
    assert ex["top_member"] == max(ex["members"], key=ex["members"].get)
    assert ex["score"] == pytest.approx(max(ex["members"].values()), rel=1e-6)  # one span: the fused score
    assert all(isinstance(v, float) for v in ex["members"].values())  # what the evidence view draws
    assert set(ex["member_bands"]) == set(VIEWS)
    bands = np.asarray(ex["bands"])
    assert bands.shape == (det.feature_config.n_mels,) and np.abs(bands).sum() == pytest.approx(1.0)
    # The squeal (3.3 kHz) is where the explanation points.
    import librosa

    centres = librosa.mel_frequencies(n_mels=det.feature_config.n_mels + 2, fmax=det.feature_config.fmax or 8000)[1:-1]
    assert abs(centres[int(np.argmax(bands))] - _KINDS["hum"].squeal_hz) < 300
    assert np.asarray(ex["band_delta_db"]).shape == (det.feature_config.n_mels,)
    assert ex["worst_span"]["start_s"] == 0.0


def test_registry_makes_the_kind():
    assert isinstance(make_detector("multiview", fusion="top2"), MultiViewDetector)


# ------------------------------------------------------------ real audio


@pytest.mark.realaudio
@pytest.mark.slow
def test_default_ranks_the_valve_split(valve_split):
    """Valve split: 25 training clips, 20 normal and 20 anomalous test clips (a fixed subset;
    measured 0.985 at seed 0, the full split 0.993: benchmarks/README.md). The plain maximum of
    the member z reaches 0.94 here: the issue's 0.96 checks the decorrelation too."""
    labels = valve_split["labels"]
    normal = [p for p, lab in zip(valve_split["test"], labels) if lab == 0][::2][:20]
    faulty = [p for p, lab in zip(valve_split["test"], labels) if lab == 1][::5][:20]
    det = MultiViewDetector(seed=0)
    det.calibrate_on_fit = False  # the ranking does not depend on it
    det.fit(valve_split["train"][::2])
    auc = roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(faulty))], det.score(normal + faulty))
    assert auc > 0.96


def test_scan_rows_carry_each_members_standardised_score(det, tmp_path):
    import soundfile as sf

    from machine_monitor.filescore import ScanRow, score_file

    path = tmp_path / "squeal.wav"
    sf.write(path, clip(600, "squeal", 3.0), 16000, subtype="FLOAT")
    row = score_file(det, path)
    score, members = det.score_members(det.load_signal(path))
    assert row.score == pytest.approx(score) and row.members == members and set(members) == set(VIEWS)
    assert row.score == pytest.approx(max(members.values()), abs=1e-3)  # the fused score is the largest z
    # A CSV row holds them as JSON text and reads back.
    assert ScanRow.from_record(row.to_record(flat=True)).members == members


def test_stream_scores_equal_whole_window_scores(det):
    """The monitor's stream scorer computes each log-mel frame once, and scores every
    window exactly as score_signal scores that window's audio."""
    from machine_monitor.live.windows import RingBuffer

    y = np.concatenate([clip(700), clip(701, "knocks", 2.0), clip(702)])
    window, hop = det.feature_config.min_samples, 16 * det.feature_config.hop_length
    ring = RingBuffer(y.size)
    ring.extend(y)
    stream = det.streaming()
    starts = list(range(0, y.size - window + 1, hop))
    got = [stream.score(ring, s, s + window) for s in starts]
    want = [det.score_signal(y[s:s + window]) for s in starts]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # After a gap (the monitor skips silence) the next window starts afresh, still exact.
    stream.reset(0)
    stream.score(ring, 0, window)
    s = 6 * hop
    stream.skip_to(s)
    assert stream.score(ring, s, s + window) == pytest.approx(det.score_signal(y[s:s + window]), rel=1e-4)
    off_grid = s + 100  # not on the frame grid: scored whole
    assert stream.score(ring, off_grid, off_grid + window) == det.score_signal(y[off_grid:off_grid + window])
