"""Deterministic synthetic machine sound: the demo recordings and test fixtures.

The machine is a 2-pole induction motor driving a 7-blade fan on a 50 Hz grid:

* **normal**: shaft orders (rotation ~49.2 Hz, the blade-pass order 7 strongest)
  and magnetostrictive hum at 100, 200, ... Hz, all with slowly drifting
  amplitudes; broadband noise coloured by a few fixed structural resonances;
  slow load wander of shaft speed and level (a few percent over seconds);
  random phases, noise and a tiny speed offset per clip, so clips differ but
  are clearly the same machine.
* **anomalies**, added from ``onset`` to the end: ``"bearing"`` (outer-race
  defect impulses ringing a high-frequency resonance), ``"imbalance"`` (raised
  1x order, amplitude and frequency modulation at the rotation rate) and
  ``"squeal"`` (intermittent narrow-band tone with wandering pitch plus
  friction noise). Each is a few dB above the normal level in its bands:
  easy for a log-mel autoencoder, not absurd.

Everything is drawn from ``numpy.random.default_rng`` streams spawned from one
integer seed: the same arguments give the same samples. The normal part and the
anomaly use separate streams, so a clip with an anomaly is sample-identical to
the normal clip of the same seed before ``onset``.

Regenerate the demo set with ``python -m machine_monitor.synth [ROOT] [--seed N]``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

ANOMALY_KINDS = ("bearing", "imbalance", "squeal")

# Anomaly severities (absolute, full scale = 1), tuned so each raises its own
# bands by several dB while the clip peak stays well below full scale.
_BEARING_PEAK = 0.06  # peak of one ringing defect impulse
_IMBALANCE_1X = 0.11  # extra 1x amplitude (normal 1x is ~0.03)
_IMBALANCE_AM = 0.25  # amplitude-modulation depth at the rotation rate
_IMBALANCE_PM = 0.02  # shaft phase modulation (rad), i.e. a ~2 % speed ripple
_SQUEAL_TONE = 0.016  # peak of the squeal fundamental
_SQUEAL_FRICTION = 0.012  # RMS of the friction noise during a squeal burst

_ONSET_FADE_S = 0.05  # anomalies fade in over 50 ms: no click at onset
_WARMUP_S = 0.05  # noise filters run this long before t=0: no start transient

# write_demo_recordings: each group of clips draws from its own seed range, so
# the groups are disjoint and fewer clips give a prefix of the same set.
_SEED_STRIDE = 2**20
_GROUP_OFFSETS = {"train": 0, "test_normal": 2**18, "test_anomalous": 2**19}


@dataclass(frozen=True)
class MachineParams:
    """Identity of a synthetic machine: same params, same machine.

    Amplitudes are absolute (full scale = 1), so a louder machine is louder.

    Attributes
    ----------
    rotation_hz : float
        Shaft rotation rate (a 2-pole motor on 50 Hz with ~1.6 % slip).
    harmonic_weights : tuple of float
        Peak amplitude of shaft orders 1, 2, 3, ...; order 7 is the fan's
        blade pass.
    line_hz : float
        Mains frequency; the hum sits at 2, 4, 6, ... times it.
    hum_weights : tuple of float
        Peak amplitude of the hum at ``2 * line_hz``, ``4 * line_hz``, ...
    resonances : tuple of (float, float, float)
        Structural resonances ``(center_hz, q, rms)`` that colour the noise.
    noise_level : float
        Scale applied to every resonance's ``rms``.
    floor_level : float
        RMS of a white noise floor so that no band is ever empty.
    bearing_order : float
        Outer-race ball-pass frequency (BPFO) as a multiple of the rotation.
    bearing_resonance_hz : float
        Resonance rung by bearing defect impulses.
    squeal_hz : float
        Centre pitch of a rubbing squeal.
    """

    rotation_hz: float = 49.2
    harmonic_weights: tuple[float, ...] = (
        0.030, 0.045, 0.022, 0.016, 0.010, 0.008, 0.055, 0.006,
        0.005, 0.004, 0.003, 0.003, 0.002, 0.018,
    )  # fmt: skip
    line_hz: float = 50.0
    hum_weights: tuple[float, ...] = (0.060, 0.025, 0.012, 0.006)
    resonances: tuple[tuple[float, float, float], ...] = (
        (380.0, 3.0, 0.066),
        (1150.0, 5.0, 0.047),
        (2600.0, 6.0, 0.030),
        (4700.0, 4.0, 0.019),
    )
    noise_level: float = 1.0
    floor_level: float = 0.006
    bearing_order: float = 3.57
    bearing_resonance_hz: float = 3900.0
    squeal_hz: float = 3150.0


def machine_sound(
    seconds: float,
    *,
    sr: int = 16000,
    seed: int = 0,
    anomaly: str | None = None,
    onset: float = 0.0,
    machine: MachineParams = MachineParams(),
) -> np.ndarray:
    """Synthesize a clip of the machine, optionally with an anomaly.

    Parameters
    ----------
    seconds : float > 0
        Duration; the clip has ``round(seconds * sr)`` samples.
    sr : int >= 8000
        Sample rate in Hz. Components above ``0.45 * sr`` are left out.
    seed : int >= 0
        Seed of everything random in the clip (phases, noise, wander, anomaly).
    anomaly : {None, "bearing", "imbalance", "squeal"}
        Fault to add from ``onset`` to the end of the clip.
    onset : float
        Start of the anomaly in seconds, ``0 <= onset < seconds``. Ignored
        when ``anomaly`` is None. Before it the clip equals the normal clip of
        the same seed sample for sample.
    machine : MachineParams
        Which machine is heard.

    Returns
    -------
    y : np.ndarray, shape (n_samples,), dtype float32
        Mono signal in [-1, 1]; normal clips peak around 0.5.

    Raises
    ------
    ValueError
        On an unknown anomaly, an out-of-range argument, or an ``sr`` too low
        for the anomaly's band (bearing at the default 3.9 kHz needs about
        9.2 kHz).
    """
    if anomaly is not None and anomaly not in ANOMALY_KINDS:
        raise ValueError(f"anomaly must be None or one of {ANOMALY_KINDS}, not {anomaly!r}")
    if sr < 8000:
        raise ValueError(f"sr must be >= 8000 Hz, not {sr}")
    n = int(np.rint(seconds * sr))
    if n < 1:
        raise ValueError(f"seconds must give at least one sample, not {seconds!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    if anomaly is not None and not 0.0 <= onset < seconds:
        raise ValueError(f"onset must be in [0, {seconds}) seconds, not {onset!r}")

    # Separate streams: the normal part never depends on whether or which
    # anomaly is drawn, which makes "identical before onset" hold exactly.
    base_seq, fault_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(base_seq)
    fault_rng = np.random.default_rng(fault_seq)

    shaft = _shaft_phase(rng, n, sr, machine)
    ramp = _onset_ramp(n, sr, onset)
    shaft_pm = np.zeros(n)
    gain = np.ones(n)
    extra = np.zeros(n)
    if anomaly == "imbalance":
        shaft_pm, gain, extra = _imbalance(fault_rng, shaft, ramp, machine)
    elif anomaly == "bearing":
        extra = _bearing(fault_rng, sr, shaft, onset, ramp, machine)
    elif anomaly == "squeal":
        extra = _squeal(fault_rng, sr, shaft, onset, ramp, machine)

    y = _normal(rng, sr, shaft + shaft_pm, machine) * gain + extra
    # A guard only: the levels above keep real clips far from full scale.
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def write_demo_recordings(
    root: str | Path,
    *,
    n_normal: int = 40,
    n_test_normal: int = 6,
    n_test_anomalous: int = 6,
    seconds: float = 3.0,
    seed: int = 0,
) -> list[Path]:
    """Write the demo data set as 16 kHz mono 16-bit PCM WAV files.

    Layout::

        root/normal/normal_000.wav ...                training clips
        root/test/normal_000.wav ...                  held-out normal clips
        root/test/anomaly_bearing_000.wav,
        root/test/anomaly_imbalance_001.wav, ...      anomalies from t = 0

    Anomaly kinds cycle through bearing, imbalance, squeal; ``NNN`` counts the
    anomalous clips. The three groups use disjoint seeds; asking for fewer
    clips writes a prefix of the same files. Existing files of the same names
    are overwritten; other files are left alone.

    Parameters
    ----------
    root : str or Path
        Output directory (created if missing).
    n_normal, n_test_normal, n_test_anomalous : int >= 0
        Number of clips of each group.
    seconds : float > 0
        Duration of every clip.
    seed : int >= 0
        Seed of the whole set: the same seed writes byte-identical files.

    Returns
    -------
    paths : list of Path
        Every file written, in the order above.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    counts = (n_normal, n_test_normal, n_test_anomalous)
    if min(counts) < 0 or max(counts) >= 2**18:
        raise ValueError(f"clip counts must be in [0, 2**18), not {counts}")
    root = Path(root)
    first = {group: seed * _SEED_STRIDE + offset for group, offset in _GROUP_OFFSETS.items()}
    jobs = [(root / "normal" / f"normal_{i:03d}.wav", first["train"] + i, None) for i in range(n_normal)]
    jobs += [(root / "test" / f"normal_{i:03d}.wav", first["test_normal"] + i, None) for i in range(n_test_normal)]
    for i in range(n_test_anomalous):
        kind = ANOMALY_KINDS[i % len(ANOMALY_KINDS)]
        path = root / "test" / f"anomaly_{kind}_{i:03d}.wav"
        jobs.append((path, first["test_anomalous"] + i, kind))

    sr = 16000
    for path, clip_seed, kind in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
        y = machine_sound(seconds, sr=sr, seed=clip_seed, anomaly=kind)
        sf.write(path, y, sr, subtype="PCM_16", format="WAV")
    return [path for path, _, _ in jobs]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m machine_monitor.synth [ROOT] [--seed N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m machine_monitor.synth",
        description="Regenerate the synthetic demo recordings (16 kHz mono WAV).",
    )
    parser.add_argument("root", nargs="?", default="recordings", help="output directory (default: recordings)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole set (default: 0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be >= 0")

    paths = write_demo_recordings(args.root, seed=args.seed)
    for path in paths:
        print(path)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files ({total / 1e6:.1f} MB) to {args.root} with seed {args.seed}")
    return 0


# ---------------------------------------------------------------- internals


def _wander(rng: np.random.Generator, n: int, sr: int, *, depth: float) -> np.ndarray:
    """Smooth zero-mean random curve within +-depth, changing over seconds.

    A few slow sinusoids with random rates and phases: smooth and cheap.
    """
    n_terms = 4
    rates = rng.uniform(0.05, 0.6, n_terms)
    phases = rng.uniform(0.0, 2 * np.pi, n_terms)
    weights = rng.uniform(0.5, 1.0, n_terms)
    t = np.arange(n) / sr
    curve = np.zeros(n)
    for rate, phase, weight in zip(rates, phases, weights, strict=True):
        curve += weight * np.sin(2 * np.pi * rate * t + phase)
    return depth * curve / weights.sum()


def _onset_ramp(n: int, sr: int, onset: float) -> np.ndarray:
    """0 before ``onset``, a raised-cosine rise over 50 ms, then 1, shape (n,)."""
    t = np.arange(n) / sr - onset
    rise = np.clip(t / _ONSET_FADE_S, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * rise)


def _bandpass(center_hz: float, q: float, sr: int) -> np.ndarray | None:
    """2nd-order Butterworth band-pass as SOS, or None if above 0.45 * sr."""
    half = center_hz / (2 * q)
    lo, hi = center_hz - half, center_hz + half
    if hi >= 0.45 * sr:
        return None
    return signal.butter(2, [lo, hi], btype="bandpass", output="sos", fs=sr)


def _band_noise(rng: np.random.Generator, n: int, sr: int, center_hz: float, q: float, rms: float) -> np.ndarray:
    """Gaussian noise band-limited around ``center_hz`` with RMS ~ ``rms``."""
    sos = _bandpass(center_hz, q, sr)
    warm = int(_WARMUP_S * sr)
    white = rng.standard_normal(n + warm)  # drawn even if unused: same stream layout at any sr
    if sos is None:
        return np.zeros(n)
    # Unit white noise keeps ENBW / (sr / 2) of its power; a 2nd-order
    # Butterworth's noise bandwidth is ~1.11 times its -3 dB bandwidth.
    enbw = 1.11 * center_hz / q
    scale = rms * np.sqrt(sr / 2 / enbw)
    return scale * signal.sosfilt(sos, white)[warm:]


def _shaft_phase(rng: np.random.Generator, n: int, sr: int, m: MachineParams) -> np.ndarray:
    """Shaft angle in radians, shape (n,): per-clip speed offset plus load wander."""
    speed = m.rotation_hz * (1.0 + rng.normal(0.0, 0.003) + _wander(rng, n, sr, depth=0.015))
    return rng.uniform(0.0, 2 * np.pi) + 2 * np.pi * np.cumsum(speed) / sr


def _normal(rng: np.random.Generator, sr: int, shaft: np.ndarray, m: MachineParams) -> np.ndarray:
    """The healthy machine, shape (n,), driven by the shaft angle."""
    n = shaft.size
    nyquist_guard = 0.45 * sr
    level = 1.0 + _wander(rng, n, sr, depth=0.04)

    y = np.zeros(n)
    for order, weight in enumerate(m.harmonic_weights, start=1):
        drift = 1.0 + _wander(rng, n, sr, depth=0.15)
        phase = rng.uniform(0.0, 2 * np.pi)
        if order * m.rotation_hz * 1.05 < nyquist_guard:  # speed wanders < 3 %
            y += weight * drift * np.sin(order * shaft + phase)

    # Hum follows the grid, not the shaft: stable to a few hundredths of a Hz.
    line = m.line_hz * (1.0 + rng.normal(0.0, 0.0005))
    t = np.arange(n) / sr
    for k, weight in enumerate(m.hum_weights, start=1):
        drift = 1.0 + _wander(rng, n, sr, depth=0.10)
        phase = rng.uniform(0.0, 2 * np.pi)
        if 2 * k * line < nyquist_guard:
            y += weight * drift * np.sin(2 * np.pi * 2 * k * line * t + phase)

    for center_hz, q, rms in m.resonances:
        y += _band_noise(rng, n, sr, center_hz, q, m.noise_level * rms)
    y += m.floor_level * rng.standard_normal(n)
    return level * y


def _imbalance(
    rng: np.random.Generator, shaft: np.ndarray, ramp: np.ndarray, m: MachineParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotor imbalance: (shaft phase modulation, gain, added 1x), each shape (n,).

    The unbalanced mass pulls once per revolution: the structure's response is
    modulated at the rotation rate (AM), the shaft speed ripples (FM, which
    spreads every order into sidebands) and the 1x order itself grows.
    """
    phase = rng.uniform(0.0, 2 * np.pi)
    once_per_rev = np.sin(shaft + phase)
    shaft_pm = _IMBALANCE_PM * ramp * once_per_rev
    gain = 1.0 + _IMBALANCE_AM * ramp * once_per_rev
    extra = _IMBALANCE_1X * ramp * np.sin(shaft + phase + rng.uniform(-0.5, 0.5))
    return shaft_pm, gain, extra


def _bearing(
    rng: np.random.Generator, sr: int, shaft: np.ndarray, onset: float, ramp: np.ndarray, m: MachineParams
) -> np.ndarray:
    """Outer-race defect: an impulse per ball pass ringing a resonance, shape (n,)."""
    n = shaft.size
    sos = _bandpass(m.bearing_resonance_hz, 8.0, sr)
    if sos is None:
        raise ValueError(f"sr={sr} is too low for a bearing resonance at {m.bearing_resonance_hz} Hz")
    # Ball passes at BPFO, locked to the actual shaft angle; rolling elements
    # slip, so each pass is jittered by ~2 % of its period.
    start = min(int(np.ceil(onset * sr)), n - 1)
    passes = m.bearing_order * (shaft - shaft[start]) / (2 * np.pi)
    k = np.arange(1, int(passes[-1]) + 1)
    times = np.searchsorted(passes, k) + rng.normal(0.0, 0.02, k.size) * sr / (m.bearing_order * m.rotation_hz)
    times = np.round(times).astype(int)
    keep = (times >= start) & (times < n)
    # Load zone: impacts are harder where the load presses the defect.
    load_zone = 0.75 + 0.25 * np.cos(shaft[np.clip(times, 0, n - 1)])
    amps = load_zone * rng.lognormal(0.0, 0.2, k.size)
    impulses = np.zeros(n)
    np.add.at(impulses, times[keep], amps[keep])

    # Scale so that one impulse rings with peak _BEARING_PEAK.
    unit = np.zeros(int(0.02 * sr))
    unit[0] = 1.0
    peak = np.abs(signal.sosfilt(sos, unit)).max()
    return ramp * (_BEARING_PEAK / peak) * signal.sosfilt(sos, impulses)


def _squeal(
    rng: np.random.Generator, sr: int, shaft: np.ndarray, onset: float, ramp: np.ndarray, m: MachineParams
) -> np.ndarray:
    """Rubbing: intermittent narrow-band tone of wandering pitch plus friction noise."""
    n = shaft.size
    if 1.05 * m.squeal_hz >= 0.45 * sr:
        raise ValueError(f"sr={sr} is too low for a squeal at {m.squeal_hz} Hz")
    # Bursts of 0.3-0.8 s with 0.05-0.3 s pauses, the first one at onset.
    gate = np.zeros(n)
    t0 = onset
    while t0 * sr < n:
        length = rng.uniform(0.3, 0.8)
        gate[int(t0 * sr) : int((t0 + length) * sr)] = 1.0
        t0 += length + rng.uniform(0.05, 0.3)
    smooth = signal.windows.hann(int(0.03 * sr))
    gate = np.convolve(gate, smooth / smooth.sum())[smooth.size // 2 :][:n] * ramp

    # Stick-slip pitch: slow wander of a few percent plus a fast flutter.
    t = np.arange(n) / sr
    pitch = m.squeal_hz * (1.0 + _wander(rng, n, sr, depth=0.04) + 0.004 * np.sin(2 * np.pi * 6.5 * t))
    phase = rng.uniform(0.0, 2 * np.pi) + 2 * np.pi * np.cumsum(pitch) / sr
    tone = _SQUEAL_TONE * np.sin(phase)
    if 2.1 * m.squeal_hz < 0.45 * sr:
        tone += 0.15 * _SQUEAL_TONE * np.sin(2 * phase + 1.0)

    # Friction noise scrapes once per revolution.
    friction = _band_noise(rng, n, sr, 3000.0, 1.0, _SQUEAL_FRICTION)
    friction *= 0.6 + 0.4 * np.sin(shaft)
    return gate * (tone + friction)


# ---------------------------------------------------------------- fault mechanisms (SYNTHETIC)
#
# A benchmark of machine kinds x fault mechanisms, to see which view of a log-mel catches
# which kind of fault. Everything here is SYNTHETIC: no real machine was recorded.

MACHINE_KINDS = ("hum", "fan", "valve", "texture")
MECHANISMS = ("level", "knocks", "weak_clicks", "modulation", "squeal", "drift")
# Machines with periodic transients (valve actuations, a conveyor belt's splice) are the
# only ones whose clicks can weaken or go missing.
_CLICKING = ("valve", "texture")


def mechanism_pairs() -> list[tuple[str, str]]:
    """Every (machine kind, mechanism) the generator can make, in a fixed order."""
    return [(k, m) for k in MACHINE_KINDS for m in MECHANISMS if m != "weak_clicks" or k in _CLICKING]


@dataclass(frozen=True)
class _Kind:
    """Where a SYNTHETIC machine kind keeps its energy; faults act on these places."""

    harmonic_hz: float  # fundamental of its harmonic series
    harmonic_weights: tuple[float, ...]
    noise: tuple[tuple[float, float, float], ...]  # (centre Hz, q, rms) band noises
    level_band: tuple[float, float]  # (centre Hz, q) of the band whose level a "level" fault shifts
    knock_hz: float  # resonance an intermittent knock rings
    squeal_hz: float  # pitch of an added squeal
    drift_order: int  # the harmonic (1-based) that drifts
    knock_rel: float = 1.0  # knock size relative to the default (a loud machine hides knocks)
    drift: float = 1.0  # drift size relative to the default
    squeal_rel: float = 1.0  # squeal size relative to the default


_KINDS = {
    # Transformer / motor hum: harmonics of 100 Hz, a little structural noise.
    "hum": _Kind(100.0, (0.070, 0.035, 0.025, 0.015, 0.010, 0.008, 0.006, 0.005, 0.004, 0.003),
                 ((300.0, 1.5, 0.012), (1300.0, 2.0, 0.010), (3200.0, 1.5, 0.006)), (1300.0, 2.0), 2600.0,
                 3300.0, 7),
    # Fan: blade pass (7 blades x 24.6 Hz) and its harmonics over broadband airflow noise.
    "fan": _Kind(172.2, (0.040, 0.018, 0.010, 0.006, 0.004),
                 ((500.0, 0.8, 0.050), (1800.0, 1.0, 0.035), (4500.0, 1.2, 0.020)), (1800.0, 2.0), 3000.0,
                 3600.0, 1, knock_rel=2.5, drift=2.0),
    # Solenoid valve: an actuation click about once a second over weak pump hum and flow noise.
    "valve": _Kind(60.0, (0.010, 0.008, 0.006, 0.004, 0.003, 0.002), ((800.0, 1.0, 0.008), (2500.0, 1.5, 0.004)),
                   (800.0, 2.0), 3000.0, 5200.0, 5, knock_rel=2.5),
    # Broadband texture: a conveyor's dense grain noise, a slow motor series, a splice thump every ~1.6 s.
    "texture": _Kind(30.0, (0.015, 0.010, 0.008, 0.012, 0.005, 0.004, 0.003, 0.002),
                     ((700.0, 0.7, 0.030), (3000.0, 0.8, 0.030), (6000.0, 1.0, 0.015)), (3000.0, 2.0), 1500.0,
                     4800.0, 4, knock_rel=4.0, drift=6.0, squeal_rel=2.0),
}

# Fault sizes at severity 1, chosen so that no single view of the log-mel catches every
# mechanism perfectly (see benchmarks/bench_generalisation.py).
_LEVEL_DB = 2.5  # steady level change of one band
_KNOCKS_PER_10S = 3.0  # mean number of knocks in 10 s (at least one per clip)
_KNOCK_PEAK = 0.5  # knock peak relative to the clip's RMS
_WEAK_CLICKS_DB = -4.0  # weaker clicks ...
_MISSING_CLICKS = 0.15  # ... and this share of them missing
_MODULATION_DEPTH = 0.2  # amplitude modulation depth, at 3-7 Hz
_SQUEAL_REL = 0.08  # squeal amplitude relative to the clip's RMS
_DRIFT = 0.03  # a harmonic drifts up to this fraction of its frequency over the clip


def mechanism_sound(
    seconds: float,
    *,
    kind: str,
    mechanism: str | None = None,
    seed: int = 0,
    sr: int = 16000,
    severity: float = 1.0,
) -> np.ndarray:
    """SYNTHETIC clip of one machine kind, optionally with one fault mechanism.

    Machine kinds (each clip varies in level, speed, click timing and noise, so clips
    differ as recordings of one machine do):

    * ``hum``: steady harmonics of 100 Hz with a little structural noise;
    * ``fan``: blade-pass tone and harmonics over broadband airflow noise;
    * ``valve``: a short two-resonance click about once a second over weak hum and flow;
    * ``texture``: dense broadband grain noise, a slow motor series and a periodic thump.

    Mechanisms (for the whole clip):

    * ``level``: one band's steady level a few dB higher;
    * ``knocks``: a few intermittent knocks ringing a resonance;
    * ``weak_clicks``: the periodic clicks weaker and some missing (``valve``, ``texture``);
    * ``modulation``: the whole sound amplitude-modulated at a few hertz;
    * ``squeal``: an added narrow-band tone with a wandering pitch;
    * ``drift``: one harmonic slowly gliding up by a few percent.

    Parameters
    ----------
    seconds : float > 0
    kind : {"hum", "fan", "valve", "texture"}
    mechanism : str or None
        One of :data:`MECHANISMS`, or None for normal sound.
    seed : int >= 0
        Seed of everything random; the normal part does not depend on ``mechanism``.
    sr : int >= 16000
    severity : float > 0
        Scales the fault's size (1 = the benchmark's difficulty).

    Returns
    -------
    y : np.ndarray, shape (round(seconds * sr),), dtype float32
        Mono, peak below 1.

    Raises
    ------
    ValueError
        On an unknown kind or mechanism, a mechanism the kind cannot have, or a bad argument.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {MACHINE_KINDS}, not {kind!r}")
    if mechanism is not None and (kind, mechanism) not in mechanism_pairs():
        raise ValueError(f"mechanism {mechanism!r} is not one of {MECHANISMS} applicable to a {kind!r} machine")
    n = int(np.rint(seconds * sr))
    if n < 1 or sr < 16000 or seed < 0 or not severity > 0:
        raise ValueError(f"need seconds > 0, sr >= 16000, seed >= 0, severity > 0; got {seconds}, {sr}, {seed}, "
                         f"{severity}")
    spec = _KINDS[kind]
    base_seq, fault_seq = np.random.SeedSequence([seed, MACHINE_KINDS.index(kind)]).spawn(2)
    rng, frng = np.random.default_rng(base_seq), np.random.default_rng(fault_seq)
    t = np.arange(n) / sr
    level = 10 ** (rng.normal(0.0, 1.0) / 20) * (1.0 + _wander(rng, n, sr, depth=0.05))

    # Harmonic series; "drift" glides one harmonic up over the clip.
    f0 = spec.harmonic_hz * (1.0 + rng.normal(0.0, 0.004))
    glide = np.zeros(n)
    if mechanism == "drift":
        # Up over the first two thirds of the clip, then holding.
        glide = severity * spec.drift * _DRIFT * frng.uniform(0.8, 1.0) * np.clip(t / seconds * 1.5, 0.0, 1.0)
    y = np.zeros(n)
    for order, weight in enumerate(spec.harmonic_weights, start=1):
        amp = weight * (1.0 + _wander(rng, n, sr, depth=0.1)) * 10 ** (rng.normal(0.0, 0.5) / 20)
        freq = order * f0 * (1.0 + (glide if order == spec.drift_order else 0.0))
        y += amp * np.sin(rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.cumsum(freq) / sr)
    for centre, q, rms_ in spec.noise:
        y += _band_noise(rng, n, sr, centre * (1.0 + rng.normal(0.0, 0.01)), q, rms_ * 10 ** (rng.normal(0, 0.5) / 20))
    y += 0.002 * rng.standard_normal(n)

    weak = mechanism == "weak_clicks"
    if kind == "valve":
        y += _clicks(rng, frng, n, sr, period=rng.uniform(0.8, 1.2), peak=0.3, bands=((1800.0, 6.0), (4200.0, 8.0)),
                     decay_s=0.012, weak=weak, severity=severity)
    elif kind == "texture":
        grains = np.where(rng.random(n) < 400.0 / sr, rng.exponential(1.0, n), 0.0)
        sos = signal.butter(2, [1000.0, 6500.0], btype="bandpass", output="sos", fs=sr)
        y += 0.04 * signal.sosfilt(sos, grains)
        y += _clicks(rng, frng, n, sr, period=rng.uniform(1.4, 1.8), peak=0.12, bands=((300.0, 2.0), (2000.0, 3.0)),
                     decay_s=0.04, weak=weak, severity=severity)
    y *= level

    rms_y = float(np.sqrt(np.mean(y**2)))
    if mechanism == "level":
        sos = _bandpass(spec.level_band[0], spec.level_band[1], sr)
        y = y + (10 ** (severity * _LEVEL_DB / 20) - 1.0) * signal.sosfiltfilt(sos, y)
    elif mechanism == "knocks":
        count = max(1, frng.poisson(_KNOCKS_PER_10S * seconds / 10.0))
        imp = np.zeros(n)
        at = frng.integers(0, max(1, n - sr // 20), count)
        np.add.at(imp, at, frng.uniform(0.7, 1.0, count))
        y += severity * spec.knock_rel * _KNOCK_PEAK * rms_y * _ring(imp, sr, spec.knock_hz, 0.015)
    elif mechanism == "modulation":
        fm = frng.uniform(3.0, 7.0)
        y *= 1.0 + severity * _MODULATION_DEPTH * np.sin(2 * np.pi * fm * t + frng.uniform(0, 2 * np.pi))
    elif mechanism == "squeal":
        pitch = spec.squeal_hz * (1.0 + _wander(frng, n, sr, depth=0.02))
        y += severity * spec.squeal_rel * _SQUEAL_REL * rms_y * np.sqrt(2) * np.sin(2 * np.pi * np.cumsum(pitch) / sr)
    peak = np.abs(y).max()
    if peak > 0.9:  # a guard: the levels above keep clips far from full scale
        y *= 0.9 / peak
    return y.astype(np.float32)


def write_mechanism_set(
    root: str | Path,
    *,
    kind: str,
    n_train: int = 30,
    n_test_normal: int = 20,
    n_test_anomalous: int = 20,
    seconds: float = 10.0,
    seed: int = 0,
) -> dict:
    """Write one SYNTHETIC machine kind's benchmark set as 16 kHz 16-bit WAV and a split.

    Layout: ``root/<kind>/train/normal_NNN.wav``, ``root/<kind>/test/normal_NNN.wav`` and
    ``root/<kind>/test/anomaly_<mechanism>_NNN.wav`` for every mechanism the kind can have.
    Clip seeds are disjoint across groups; the same arguments write the same files.

    Returns
    -------
    split : dict
        ``{"name", "synthetic": True, "train": [path, ...], "test": [[path, label, mechanism], ...]}``
        with absolute paths; normal test clips carry the mechanism ``"normal"``.
    """
    root = Path(root) / kind
    base = seed * _SEED_STRIDE
    jobs = [(root / "train" / f"normal_{i:03d}.wav", base + i, None) for i in range(n_train)]
    jobs += [(root / "test" / f"normal_{i:03d}.wav", base + 2**18 + i, None) for i in range(n_test_normal)]
    mechs = [m for k, m in mechanism_pairs() if k == kind]
    for j, mech in enumerate(mechs):
        jobs += [(root / "test" / f"anomaly_{mech}_{i:03d}.wav", base + 2**19 + j * 4096 + i, mech)
                 for i in range(n_test_anomalous)]
    for path, clip_seed, mech in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, mechanism_sound(seconds, kind=kind, mechanism=mech, seed=clip_seed), 16000, subtype="PCM_16")
    return {"name": f"synthetic-{kind}", "synthetic": True,
            "train": [str(p) for p, _, m in jobs if p.parent.name == "train"],
            "test": [[str(p), int(m is not None), m or "normal"] for p, _, m in jobs if p.parent.name == "test"]}


def _ring(impulses: np.ndarray, sr: int, centre_hz: float, decay_s: float) -> np.ndarray:
    """Impulses ringing a damped resonance at ``centre_hz``; a unit impulse peaks at ~1."""
    r = np.exp(-1.0 / (decay_s * sr))
    w = 2 * np.pi * centre_hz / sr
    b, a = [1.0 - r], [1.0, -2 * r * np.cos(w), r * r]
    unit = np.zeros(int(4 * decay_s * sr) + 8)
    unit[0] = 1.0
    gain = np.abs(signal.lfilter(b, a, unit)).max()
    return signal.lfilter(b, a, impulses) / gain


def _clicks(rng, frng, n: int, sr: int, *, period: float, peak: float, bands, decay_s: float, weak: bool,
            severity: float) -> np.ndarray:
    """Periodic clicks (jittered period, varying strength) ringing ``bands``; ``weak``: the fault."""
    count = int(n / sr / period) + 2
    times = (rng.uniform(0.0, period) + period * np.arange(count)) * (1 + rng.normal(0, 0.03, count).cumsum() * 0.1)
    amps = peak * rng.lognormal(0.0, 0.15, count)
    if weak:
        amps = amps * 10 ** (severity * _WEAK_CLICKS_DB / 20)
        amps[frng.random(count) < min(1.0, severity * _MISSING_CLICKS)] = 0.0
    idx = np.round(times * sr).astype(int)
    keep = (idx >= 0) & (idx < n)
    imp = np.zeros(n)
    np.add.at(imp, idx[keep], amps[keep])
    out = np.zeros(n)
    for centre, q in bands:
        out += _ring(imp, sr, centre * (1.0 + rng.normal(0.0, 0.01)), decay_s * 4.0 / q)
    return out / len(bands)


if __name__ == "__main__":
    raise SystemExit(main())
