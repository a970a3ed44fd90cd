"""``machine-monitor train DIR``: learn a machine's normal sound and save a detector."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from machine_monitor.commands.common import (
    DEFAULT_MODELS_DIR,
    DefaultsHelpFormatter,
    LibraryDefault,
    add_channel_arg,
    check_device,
    default_model_name,
    existing_audio_files,
    fraction,
    given,
    nonnegative_int,
    percentile,
    positive_float,
    positive_int,
    torch_device,
)
from machine_monitor.detectors.registry import DEFAULT_KIND, DETECTOR_KINDS

HELP = "train a detector on recordings of a machine running normally"


def _kind_default(param: str) -> LibraryDefault:
    """The default detector's own default for ``param`` (shown in --help, never passed on)."""
    return LibraryDefault(f"machine_monitor.detectors.multiview:MultiViewDetector.{param}")


def register(sub) -> None:
    p = sub.add_parser("train", help=HELP, description=HELP + ". Saves it to models/<name>/ (or --out).",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE", help="folders (or files) of normal recordings")
    p.add_argument("-o", "--out", type=Path, help="model directory (default: models/<name from the folder>)")
    p.add_argument("-r", "--recursive", action="store_true", help="also look in subfolders")
    g = p.add_argument_group("detector")
    g.add_argument("--detector", choices=tuple(DETECTOR_KINDS), default=None,
                   help=f"default: {DEFAULT_KIND}, or ae with --post, --anomalies, --scorer or --features raw. "
                   "multiview: a bank of autoencoders on views of one log-mel (span peak, mean, std, "
                   "stacked frames), fused on decorrelated standardised scores; ae: one view, autoencoder + scorer; "
                   "aegmm/vaegmm: (variational) autoencoder + Gaussian mixture energy; ocsvm/iforest: one-class "
                   "SVM / isolation forest on 1 s segment statistics")
    g.add_argument("--post", choices=("hist-rf", "diff-rf", "iforest"), default=None,
                   help="post-classifier on the autoencoder's reconstruction difference (replaces --scorer): "
                   "random forest on difference histograms / vectors (needs --anomalies), or isolation forest "
                   "on difference histograms (default with --anomalies: hist-rf)")
    g.add_argument("--anomalies", nargs="+", metavar="DIR_OR_FILE",
                   help="labelled fault recordings for a supervised post-classifier")
    g.add_argument("--features", choices=("peak", "logmel", "raw", "mean", "std"), default=None,
                   help="peak: per-band max of the log-mel over 10 s spans (ae default); logmel: 5 stacked "
                   "log-mel frames (DCASE baseline; default of the other detectors); raw: 16 kHz waveform frames; "
                   "with multiview: that one view alone (peak, mean, std, or logmel = its frame member; "
                   "default: all)")
    g.add_argument("--scorer", default=None,
                   help="window score on the reconstruction: mahalanobis (default) | mse")
    g.add_argument("--aggregate", default=_kind_default("aggregate"),
                   help="clip score from window scores: mean | max | median | pNN")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help="maximum training epochs (ae: default 1000 for peak features, 100 for frame features, "
                   "early stopping on held-out clips; "
                   "aegmm/vaegmm: default 30)")
    g.add_argument("--folds", type=positive_int, default=None,
                   help="ae: cross-fitted ensemble of this many networks (default 5 for peak features, 1 otherwise)")
    g.add_argument("--batch-size", type=positive_int,
                   default=_kind_default("batch_size"), help="training examples per optimiser step")
    g.add_argument("--lr", type=positive_float, default=_kind_default("lr"), help="learning rate (Adam)")
    g.add_argument("--val-fraction", type=fraction,
                   default=_kind_default("val_fraction"), help="share of clips held out for validation")
    g.add_argument("--seed", type=nonnegative_int, default=_kind_default("seed"),
                   help="seeds the clip split, initialisation and batch order (same seed, same model on CPU)")
    g.add_argument("--device", type=torch_device, default=None,
                   help="torch device: cpu, cuda, cuda:N or mps (default: a GPU if present, else cpu)")
    add_channel_arg(g)
    t = p.add_argument_group("threshold")
    t.add_argument("--percentile", type=percentile,
                   default=_kind_default("percentile"),
                   help="alarm above this percentile of held-out normal clip scores")
    t.add_argument("--threshold-method", choices=("gamma", "percentile"),
                   default=_kind_default("threshold_method"),
                   help="percentile of a gamma distribution fitted to the held-out scores (extrapolates past the "
                   "few clips held out), or of the scores themselves")
    t.add_argument("--contamination", type=fraction, default=None, metavar="FRACTION",
                   help="instead, set the threshold from --threshold-data, a folder known to hold this "
                   "fraction of anomalies")
    t.add_argument("--threshold-data", nargs="+", metavar="DIR_OR_FILE", help="the mixed folder for --contamination")
    t.add_argument("--group-by", default=None, metavar="PATTERN",
                   help="keep recordings of one session together in the out-of-fold calibration: 'folder' (one "
                   "session per folder) or a regular expression whose first group names the session in the path "
                   "(default: every file its own session)")
    t.add_argument("--false-alarms-per-day", type=positive_float, default=None, metavar="RATE",
                   help="target false alerts per day of live monitoring of normal sound (default: 0.1, one in "
                   "ten days)")
    p.set_defaults(run=run)


def run(args) -> int:
    from machine_monitor.errors import ConfigError

    if (args.contamination is None) != (args.threshold_data is None):
        raise ConfigError("--contamination and --threshold-data go together")
    from machine_monitor.persistence import check_model_destination

    check_device(args.device)
    clips = existing_audio_files(args.inputs, recursive=args.recursive)
    out = args.out or DEFAULT_MODELS_DIR / default_model_name(args.inputs[0])
    check_model_destination(out)  # before training: a folder of recordings is never replaced
    anomalies = existing_audio_files(args.anomalies, recursive=args.recursive) if args.anomalies else []
    det = _make_detector(args, ConfigError)
    from machine_monitor.threshold import groups_from_paths

    # Beside the model, not in /tmp (often RAM-backed): the parts of one long recording are its size again.
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".machine-monitor-parts-", dir=Path(out).parent) as tmp:
        only = clips[0] if len(clips) == 1 else None
        if only is not None:  # one recording: its consecutive parts are the recordings the calibration holds out
            clips = _cut_one_recording(only, Path(tmp), ConfigError)
            groups = ["the one recording"] * len(clips)  # one session: the calibration says what that cannot tell
        else:
            groups = groups_from_paths([str(c) for c in clips], args.group_by)
        print(f"training on {len(clips)} clips from {', '.join(args.inputs)}", file=sys.stderr)
        if anomalies:
            print(f"and on {len(anomalies)} labelled anomalies from {', '.join(args.anomalies)}", file=sys.stderr)
            det.fit(clips, anomalies=anomalies, groups=groups)
        else:
            det.fit(clips, groups=groups)
        if only is not None:  # the recording itself, not its parts, is what `threshold` must recognise
            from machine_monitor.audio.io import fingerprints

            det.training_fingerprints_ = fingerprints([only])
    if args.false_alarms_per_day is not None:
        det.set_false_alarms_per_day(args.false_alarms_per_day)
    if args.contamination is not None:
        mix = existing_audio_files(args.threshold_data, recursive=args.recursive)
        det.set_threshold(mix, method="contamination", contamination=args.contamination)
    det.save(out)
    t = det.threshold_
    ensemble = getattr(det, "ensemble_size", 1)
    cross_fitted = ensemble > 1 or getattr(det, "fold_of_", None) is not None
    held = "out-of-fold normal scores" if cross_fitted else "held-out normal clips"
    how = {"percentile": f"p{t['percentile']:g} of {t['n_scores']} {held}",
           "gamma": f"p{t['percentile']:g} of a gamma fitted to {t['n_scores']} {held}",
           }.get(t["method"], f"p{t['percentile']:g} of a {t['method']} fitted to {t['n_scores']} {held}")
    epochs = f"{len(det.history_)} epochs, " if args.detector in ("ae", "aegmm", "vaegmm") else ""
    if ensemble > 1:
        epochs = f"{ensemble} networks, {epochs}"
    print(f"saved {out}  threshold {t['value']:.4g} ({how}); {epochs}fit {det.fit_seconds_:.1f} s")
    cal = getattr(det, "calibration_", None)
    if cal:
        from machine_monitor.detectors.calibration import describe

        for line in describe(cal):
            print("  " + line)
    return 0



def _cut_one_recording(path: Path, directory: Path, ConfigError) -> list[Path]:
    """One training recording as its consecutive parts (``screening.one_recording_parts``) in ``directory``."""
    from machine_monitor.audio.io import audio_info, split_recording
    from machine_monitor.screening import MIN_PART_SECONDS, one_recording_parts

    seconds = audio_info(path).seconds
    n = one_recording_parts(seconds)
    if n == 0:
        raise ConfigError(f"{path}: one recording of {seconds:.1f} s is too short to train on: record at least "
                          f"{2 * MIN_PART_SECONDS:.0f} s of normal running (a few minutes, better several "
                          "recordings of different days)")
    print(f"one recording ({seconds / 60:.1f} min): cut into {n} consecutive parts of {seconds / n:.1f} s, "
          "held out in turn by the calibration", file=sys.stderr)
    return split_recording(path, directory, parts=n)


def _make_detector(args, ConfigError):
    """The detector the options ask for (unfitted); options left at their default are not passed,
    so the kind's own defaults apply."""
    from machine_monitor.detectors.registry import make_detector

    if args.detector is None:  # options only the autoencoder kind has ask for it
        args.detector = "ae" if (args.post or args.anomalies or args.scorer or args.features == "raw") else DEFAULT_KIND
    common = dict(given(args, "aggregate", "percentile", "threshold_method", "val_fraction", "seed"),
                  device=args.device, channel=args.channel, progress=args.progress)
    training = given(args, "epochs", "batch_size", "lr")
    if args.detector == "multiview":
        if args.post or args.anomalies or args.scorer:
            raise ConfigError("--post, --anomalies and --scorer apply to --detector ae, not multiview")
        from machine_monitor.detectors.multiview import members_for_features

        return make_detector("multiview", members=members_for_features(args.features), **common, **training,
                             **given(args, "folds"))
    features = args.features or ("peak" if args.detector == "ae" else "logmel")
    if args.detector == "ae":
        scorer = args.post or ("hist-rf" if args.anomalies else args.scorer or "mahalanobis")
        return make_detector("ae", scorer=scorer, features=features, **common, **training, **given(args, "folds"))
    if args.post or args.anomalies or args.scorer:
        raise ConfigError(f"--post, --anomalies and --scorer apply to --detector ae, not {args.detector}")
    if args.detector in ("aegmm", "vaegmm"):
        return make_detector(args.detector, features=features, **common, **training)
    return make_detector(args.detector, features=features, **common)
