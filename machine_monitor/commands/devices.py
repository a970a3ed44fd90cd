"""``machine-monitor devices``: list audio input devices (needs PortAudio)."""

from __future__ import annotations

HELP = "list audio input devices (index, name, channels, default sample rate)"


def register(sub) -> None:
    p = sub.add_parser("devices", help=HELP, description=HELP + ". Use the index or part of the name with "
                       "--device in `record` and `monitor`.")
    p.set_defaults(run=run)


def run(args) -> int:
    from machine_monitor.audio.sources import list_input_devices
    from machine_monitor.errors import AudioDeviceError

    devices = list_input_devices()
    if not devices:
        raise AudioDeviceError("no audio input device found (is a microphone connected?)")
    width = max(len(d["name"]) for d in devices)
    print(f"{'':1} {'index':>5}  {'name':<{width}}  {'channels':>8}  {'rate':>7}  host API")
    for d in devices:
        mark = "*" if d["default"] else " "
        print(f"{mark} {d['index']:>5}  {d['name']:<{width}}  {d['channels']:>8}  {d['default_samplerate']:>7.0f}  "
              f"{d['hostapi']}")
    return 0
