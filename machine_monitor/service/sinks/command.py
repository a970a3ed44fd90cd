"""Command sink: run a program for each event, as the monitor's ``--on-alert`` does.

The command is an argument vector, never run by a shell. The event arrives as
``MM_*`` environment variables (``MM_EVENT``, ``MM_MACHINE``, ``MM_ID``, ...,
``MM_JSON``) and as one JSON line on stdin; its output goes to stderr. A command
that runs longer than ``timeout`` is killed. Commands are not receivers that
acknowledge: a failure (exit status, cannot start, timeout) is logged and the
event is not run again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from machine_monitor.service.sinks.base import DeliveryError, Sink


def event_environment(event: dict) -> dict[str, str]:
    env = {f"MM_{k.upper()}": ("" if v is None else str(v)) for k, v in event.items()
           if isinstance(v, (str, int, float, bool)) or v is None}
    env["MM_JSON"] = json.dumps(event)
    return env


class CommandSink(Sink):
    def __init__(self, argv: list[str], *, timeout: float = 60.0):
        self.argv = list(argv)
        self.timeout = timeout

    def deliver(self, event: dict) -> None:
        env = {**os.environ, **event_environment(event)}
        try:
            res = subprocess.run(self.argv, input=json.dumps(event) + "\n", text=True, env=env, stdout=sys.stderr,
                                 timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise DeliveryError(f"{self.argv[0]}: still running after {self.timeout:.0f} s, killed",
                                retry=False) from None
        except OSError as exc:
            raise DeliveryError(f"{self.argv[0]}: cannot run it: {exc}", retry=False) from None
        if res.returncode != 0:
            raise DeliveryError(f"{self.argv[0]}: exit status {res.returncode}", retry=False)
