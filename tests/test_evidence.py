"""Evidence a person can read (reports/evidence.py): the one rendering behind ``scan --report`` and
the dashboard. Frequencies in Hz, levels in dB, the difference from the model's normal spectrum,
the score over time with the threshold and the anomalous span, and what the detector says
drove its score, when it says anything."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from machine_monitor.reports import evidence as E
from tests.conftest import SR, hum
from tests.test_service_sinks import machine_audio, tiny_model  # noqa: F401 - the shared small model


@pytest.fixture(scope="module")
def det(tiny_model):  # noqa: F811
    from machine_monitor.detectors.registry import load_detector

    return load_detector(tiny_model)


@pytest.fixture(scope="module")
def fault_signal() -> np.ndarray:
    """4 s of the normal hum, 2 s with clicks (the fault), 3 s of hum again."""
    return machine_audio([("n", 4.0), ("a", 2.0), ("n", 3.0)], seed=40)


@pytest.fixture(scope="module")
def ev(det, fault_signal):
    return E.collect_evidence(det, fault_signal, name="recordings/pump3/suspect.wav",
                              score=det.score_signal(fault_signal))


class Proxy:
    """The fitted detector with attributes added or hidden (another kind of detector, as the page sees it)."""

    def __init__(self, det, **attrs):
        self._det = det
        self.__dict__.update(attrs)

    def __getattr__(self, name):
        return getattr(self._det, name)


def titles(fig) -> list[str]:
    return [ax.get_title(loc="left") for ax in fig.axes]


def texts(fig) -> str:
    return " ".join(" ".join(t.get_text().split()) for ax in fig.axes for t in ax.texts)


def test_the_anomalous_span_and_the_score_over_time_locate_the_fault(ev, det):
    assert ev.span is not None
    start, end = ev.span
    # The clicks are at 4-6 s; a 1 s window reaches at most 1 s beyond them.
    assert 3.0 <= start <= 4.5 and 5.5 <= end <= 7.0, ev.span
    before = ev.scores[ev.times + ev.window_seconds <= 3.9]
    inside = ev.scores[(ev.times >= 4.0) & (ev.times + ev.window_seconds <= 6.0)]
    assert before.size and inside.size
    assert before.max() < ev.threshold < inside.min()
    assert ev.threshold == pytest.approx(det.threshold_value_)
    assert any("4." in s or "3." in s for s in ev.summary() if s.startswith("Windows above"))


def test_a_window_judged_normal_clears_the_audio_it_shares_with_an_anomalous_one():
    times = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # 2 s windows
    scores = np.array([0.0, 0.0, 5.0, 5.0, 0.0])
    assert E.anomalous_span(times, scores, 2.0, 1.0) == pytest.approx((3.0, 4.0), abs=0.02)
    assert E.anomalous_span(times, np.zeros(5), 2.0, 1.0) is None
    # Windows that disagree everywhere: the union of the anomalous ones.
    assert E.anomalous_span(np.array([0.0, 0.0]), np.array([5.0, 0.0]), 2.0, 1.0) == pytest.approx((0.0, 2.0))


def test_frequency_axis_is_in_hz_and_the_colour_scales_in_db(ev):
    hz = ev.band_hz
    assert hz.shape == (ev.spec.shape[1],) and np.all(np.diff(hz) > 0) and 0 < hz[0] < 100 and hz[-1] < SR / 2
    fig = E.evidence_figure(ev)
    freq_axes = [ax for ax in fig.axes if ax.get_ylabel() == "frequency"]
    assert len(freq_axes) == 2  # the spectrogram and the difference from normal
    for ax in freq_axes:
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert "1 kHz" in labels and "4 kHz" in labels and any(lab.endswith(" Hz") for lab in labels)
        assert all(lab.endswith("Hz") for lab in labels)  # no band numbers
    cbars = [ax.get_ylabel() for ax in fig.axes]
    assert "level (dB)" in cbars and "dB vs normal" in cbars
    assert E.render_evidence(ev)[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_difference_from_normal_shows_the_clicks_louder_than_normal(ev):
    # The default detector pools each band's peak: compared as such, window by window.
    assert ev.reference_kind == "peak"
    d, t = ev.deviation, ev.deviation_times
    high = ev.band_hz > 1000  # the hum has nothing there; the clicks are broadband
    in_fault = (t >= 4.2) & (t <= 5.8)
    calm = (t <= 3.0) | (t >= 7.3)
    assert d[np.ix_(in_fault, high)].mean() > 6.0
    assert abs(d[np.ix_(calm, high)].mean()) < 3.0
    lo, hi, db = ev.strongest_deviation()
    assert db > 6.0 and lo < hi
    assert any(s.startswith("Largest difference from normal: +") for s in ev.summary())


def test_a_mean_reference_and_an_explanation_are_drawn_when_the_detector_has_them(det, fault_signal):
    normal = hum(6.0, seed=3)
    from machine_monitor.features import logmel_frames

    ref = logmel_frames(normal).mean(axis=0)
    bands = np.zeros(128)
    bands[90:100] = 0.1
    seen = []

    def explain(y):
        seen.append(y.size)
        return {"members": {"peak": 4.5, "mean": 0.4, "frames": 1.2}, "bands": bands}

    ev = E.collect_evidence(Proxy(det, reference_logmel_=ref, explain=explain), fault_signal, name="x.wav")
    assert ev.reference_kind == "mean" and seen == [fault_signal.size]
    assert ev.span_spectrum_label.startswith("anomalous span")
    assert ev.deviation.shape == ev.spec.shape  # frame by frame against the mean spectrum
    assert ev.top_member() == ("peak", 4.5)
    assert ev.band_hz[90] <= ev.top_bands(1)[0] <= ev.band_hz[99]
    summary = " ".join(ev.summary())
    assert "View that drove the score: peak" in summary and "Bands that drove it most" in summary
    fig = E.evidence_figure(ev)
    assert {"Which view", "Bands that drove it", "Flagged vs normal"} <= set(titles(fig))


def test_without_a_normal_spectrum_the_panel_is_left_out_and_the_figure_says_why(det, fault_signal):
    ev = E.collect_evidence(Proxy(det, feature_mean_=None), fault_signal)
    assert ev.reference is None and ev.deviation is None
    fig = E.evidence_figure(ev)
    assert not any(t.startswith("Difference from normal") for t in titles(fig))
    assert "No difference from normal" in texts(fig)
    assert "does not split its score" in texts(fig)
    assert any("No difference from normal" in s for s in ev.summary())


def test_an_explanation_that_fails_does_not_lose_the_evidence(det, fault_signal, caplog):
    def explain(y):
        raise RuntimeError("member weights missing")

    ev = E.collect_evidence(Proxy(det, explain=explain), fault_signal)
    assert ev.explanation is None and ev.span is not None
    assert "could not explain" in caplog.text


def test_a_long_file_shows_where_the_trouble_starts(det, tmp_path):
    path = tmp_path / "one_hour_in_short.wav"
    sf.write(path, machine_audio([("n", 24.0), ("a", 4.0), ("n", 12.0)], seed=9), SR)
    starts, scores, seg = E.file_timeline(det, path)
    assert seg == pytest.approx(det.clip_seconds_, abs=0.01)
    above = starts[scores > det.threshold_value_]
    assert above.size and 23.0 - seg < above[0] <= 28.0 and above[-1] <= 28.5
    worst = float(starts[np.argmax(scores)])
    ev = E.evidence_for_file(det, path, offset=worst, score=float(scores.max()))
    assert ev.timeline is not None and ev.time_label == "time in file (s)"
    # The excerpt reaches a segment to each side (normal sound before and after); times are in the file.
    assert ev.offset == pytest.approx(worst - seg) and ev.duration == pytest.approx(3 * seg, abs=0.01)
    assert 23.5 <= ev.span[0] < ev.span[1] <= ev.offset + ev.duration
    assert any("the first from 2" in s for s in ev.summary())
    fig = E.evidence_figure(ev)
    assert "Score over the whole file (s)" in titles(fig)
    out = io.BytesIO(E.render_evidence(ev, fmt="jpeg"))
    assert out.getvalue()[:3] == b"\xff\xd8\xff"


def test_short_names_keep_the_file_name_readable():
    assert E.short_name("/data/pump3/2024/section_00_source_test_anomaly_0003.wav") == \
        "section_00_source_test_anomaly_0003.wav"
    s = E.short_name("x" * 30 + "_middle_" + "y" * 30 + ".wav", max_chars=30)
    assert len(s) == 30 and s.startswith("xxx") and s.endswith(".wav") and "\u2026" in s


def test_the_scan_report_shows_each_anomaly_with_this_evidence(det, tmp_path):
    from machine_monitor.filescore import score_file
    from machine_monitor.reports.report import render_report

    path = tmp_path / "long_pump.wav"
    sf.write(path, machine_audio([("n", 12.0), ("a", 3.0), ("n", 6.0)], seed=21), SR)
    row = score_file(det, path)
    assert row.anomalous and row.n_segments > 1
    page = render_report([row], det, model="tiny")
    assert page.count("data:image/jpeg;base64,") == 1
    assert "worst window from" in page and "Largest difference from normal" in page
    assert "In the whole file" in page and "the first from 1" in page  # the trouble starts at 12 s


def test_the_instance_plot_names_the_clips_it_gets_wrong(tmp_path, monkeypatch):
    from machine_monitor.reports import plots

    figs = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.append(fig), save(fig, path))[1])
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(60, int), np.ones(30, int)]
    scores = np.r_[rng.uniform(0, 0.9, 60), rng.uniform(1.1, 3, 30)]
    scores[7], scores[70] = 2.5, 0.2  # one false alarm, one missed anomaly
    names = [f"/data/clips/{'normal' if lab == 0 else 'fault'}_{i:03d}.wav" for i, lab in enumerate(labels)]
    plots.plot_instance_scores(labels, scores, 1.0, tmp_path / "many.png", names=names)
    ax = figs[-1].axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["fault_070", "normal_007"]
    assert "named: clips on the wrong side of the threshold" in ax.get_xlabel()
    plots.plot_instance_scores(labels[:20], scores[:20], 1.0, tmp_path / "few.png", names=names[:20])
    ticks = [t.get_text() for t in figs[-1].axes[0].get_xticklabels()]
    assert ticks[:3] == ["normal_000", "normal_001", "normal_002"] and len(ticks) == 20
