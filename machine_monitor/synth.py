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


if __name__ == "__main__":
    raise SystemExit(main())
