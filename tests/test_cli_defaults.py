"""Defaults live in the library once: the CLI shows them in --help but passes on only what the user gave."""

from __future__ import annotations

import inspect

from machine_monitor.cli import build_parser
from machine_monitor.commands.common import LibraryDefault, given


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_train_passes_on_only_the_options_the_user_gave():
    args = parse("train", "recordings/normal", "--lr", "0.01")
    assert given(args, "lr", "batch_size", "seed", "percentile") == {"lr": 0.01}


def test_help_shows_the_library_value_not_a_copy_of_it(capsys, monkeypatch):
    from machine_monitor.detectors.multiview import MultiViewDetector

    default_lr = inspect.signature(MultiViewDetector).parameters["lr"].default
    args = parse("train", "recordings/normal")
    assert isinstance(args.lr, LibraryDefault) and str(args.lr) == str(default_lr)
    # Change the library's default: the help follows, with nothing to edit in the CLI.
    monkeypatch.setattr(LibraryDefault, "value", lambda self: 0.123)
    assert "(default: 0.123)" in build_parser()._subparsers._group_actions[0].choices["train"].format_help()


def test_monitor_policy_defaults_come_from_the_alert_policy():
    from machine_monitor.live.policy import AlertPolicy

    args = parse("monitor", "--model", "m", "--input", "x.wav")
    assert str(args.k_of_n) == f"{AlertPolicy().k} {AlertPolicy().n}"
    assert given(args, "quiet_period", "hop") == {}
