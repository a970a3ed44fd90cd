"""Fault drill at full length: nothing lost, nothing repeated, whatever breaks (issue 12).

    python benchmarks/fault_drill.py                          # receiver down 2 min of alerts, 2 kills
    python benchmarks/fault_drill.py --down-seconds 60 --kills 3 --json /tmp/drill.json --keep /tmp/drill

The scaled-down version is ``tests/test_fault_drill.py`` (fast clocks, 4x replay, ~15 s);
this script runs the drill as the issue states it, on real-time clocks, and uses the same
helpers (the webhook receiver, the Mosquitto broker and the MQTT subscriber of
``tests/test_service_sinks.py``, ``kill9`` of the test). Everything runs on 127.0.0.1, on free
ports, started here and stopped here by process id:

* a small model (the default detector) trained at start on one minute of the synthetic
  machine (:mod:`machine_monitor.synth`);
* ``--machines`` file replays at real time whose audio alternates normal sound and a fault
  (bearing, imbalance, squeal in turn), shifted per machine, so alerts, repeats, ends and
  heartbeats keep coming;
* ``machine-monitor serve machines.toml`` as a child process, with three sinks: a JSONL log, a
  webhook to a local HTTP receiver, MQTT to a Mosquitto broker (Debian ``mosquitto``) with a
  persistent-session subscriber.

Timeline, from the first alert: the webhook receiver is down (not listening) for
``--down-seconds`` of alerts; meanwhile the service is killed with SIGKILL ``--kills`` times,
each time while an alert is firing, and started again at once, and the broker is stopped and
started again between the first and the second kill. Then the receiver comes back; after
``--tail-seconds`` of live delivery and once every sink caught up, the service is stopped
with SIGTERM.

Counted per sink against the event store (what the service produced): delivered (distinct
ids), lost (stored, never delivered), duplicated (a second copy of an id), out of order (an
event arriving after a later one). Exit status 0 when every sink has 0 lost, 0 duplicated and
0 out of order; 1 otherwise; 2 when the drill itself could not run.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the shared helpers live in tests/

SR = 16_000
SINKS = ("jsonl", "webhook", "mqtt")
FAULTS = ("bearing", "imbalance", "squeal")


def say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def machine_audio(seconds: float, *, seed: int, normal_seconds: float, fault_seconds: float,
                  lead_seconds: float) -> np.ndarray:
    """The synthetic machine: ``lead_seconds`` normal, then cycles of a fault and normal sound."""
    from machine_monitor.synth import machine_sound

    parts = [machine_sound(lead_seconds, sr=SR, seed=seed)]
    total, i = lead_seconds, 0
    while total < seconds:
        cycle = fault_seconds + normal_seconds
        fault = machine_sound(fault_seconds, sr=SR, seed=seed + 1 + i, anomaly=FAULTS[i % len(FAULTS)])
        parts += [fault, machine_sound(normal_seconds, sr=SR, seed=seed + 1000 + i)]
        total, i = total + cycle, i + 1
    return np.concatenate(parts)


def train_model(path: Path) -> None:
    """The default detector on one minute of the synthetic machine's normal sound (2 s clips)."""
    from machine_monitor import Detector
    from machine_monitor.synth import machine_sound

    Detector(seed=0).fit([machine_sound(2.0, sr=SR, seed=s) for s in range(30)]).save(path)


def write_config(work: Path, model: Path, machines: list[str], *, rx_url: str, broker_port: int) -> Path:
    conf = work / "machines.toml"
    blocks = "\n".join(f'[machines.{m}]\nmodel = "{model}"\ninput = "{m}.wav"\n' for m in machines)
    conf.write_text(f"""[service]
store = "events.db"
heartbeat_seconds = 10

[defaults]
# Faults score 5-25x the threshold, normal windows below it: a margin keeps the drill about delivery.
margin = 0.5
quiet_seconds = 3
repeat_seconds = 2

[sinks.log]
type = "jsonl"
path = "alerts.jsonl"

[sinks.hook]
type = "webhook"
url = "{rx_url}"
retry_seconds = 1
retry_max_seconds = 10

[sinks.broker]
type = "mqtt"
port = {broker_port}
client_id = "drill-service"
timeout = 2
retry_seconds = 0.5
retry_max_seconds = 5

{blocks}""")
    return conf


def count(produced: list[int], got: list[int]) -> dict:
    """Produced vs delivered for one sink (``got``: ids in arrival order, repeats included)."""
    seen: set[int] = set()
    out_of_order, duplicated, newest = 0, 0, 0
    for i in got:
        if i in seen:
            duplicated += 1
            continue
        if i < newest:
            out_of_order += 1
        seen.add(i)
        newest = max(newest, i)
    stored = set(produced)
    return {"produced": len(produced), "delivered": len(seen & stored), "lost": len(stored - seen),
            "duplicated": duplicated, "out_of_order": out_of_order, "unknown": len(seen - stored)}


def jsonl_ids(path: Path) -> tuple[list[int], int]:
    """Event ids of the JSONL log in file order, and the number of lines that are not JSON (torn)."""
    ids, torn = [], 0
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                ids.append(int(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                torn += 1
    return ids, torn


class Drill:
    def __init__(self, args, work: Path):
        from tests.test_service_sinks import Mosquitto, Receiver

        self.args = args
        self.work = work
        self.rx = Receiver()  # created down: nothing listens on its port yet
        self.broker = Mosquitto(work / "broker")
        self.sub = None
        self.proc: subprocess.Popen | None = None
        self.runs: list[dict] = []
        self.timeline: list[tuple[float, str]] = []

    def note(self, what: str) -> None:
        self.timeline.append((time.time(), what))
        say(what)

    def start_service(self, conf: Path) -> None:
        from machine_monitor.service.store import EventStore

        store = EventStore(self.work / "events.db")
        before = store.last_id()
        with open(self.work / "serve.log", "a") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "machine_monitor.cli", "serve", str(conf)],
                                         cwd=self.work, stdout=subprocess.DEVNULL, stderr=log)
        self.runs.append({"pid": self.proc.pid, "started": time.time()})
        self.note(f"service run {len(self.runs)} started (pid {self.proc.pid})")
        deadline = time.monotonic() + 120
        while not store.events(since_id=before, kinds=["service_started"]):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start (exit {self.proc.poll()}); see {self.work}/serve.log")
            time.sleep(0.1)
        store.close()

    def kill_mid_alert(self, store, machines: list[str]) -> dict:
        """SIGKILL the service while one of its alerts fires (an alert of this run, not yet ended)."""
        from tests.test_fault_drill import kill9

        run_start = store.events(kinds=["service_started"], limit=None)[-1]["id"]
        deadline = time.monotonic() + 120
        while True:
            firing = [a for a in (store.open_alert(m) for m in machines) if a is not None and a["id"] > run_start]
            if firing:
                time.sleep(random.uniform(0.2, 1.5))  # somewhere in the alert, not at its first event
                firing = [a for a in firing if (store.open_alert(a["machine"]) or {}).get("id") == a["id"]]
                if firing:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("no alert fired to kill the service in")
            time.sleep(0.05)
        kill9(self.proc)
        open_now = [m for m in machines if store.open_alert(m) is not None]
        self.runs[-1].update(ended=time.time(), exit="SIGKILL", open_alerts=open_now)
        self.note(f"SIGKILL pid {self.proc.pid} while alert {firing[0]['id']} of {firing[0]['machine']} fired "
                  f"(open: {', '.join(open_now)}; last event {store.last_id()})")
        return firing[0]

    def restart_broker(self) -> None:
        pid = self.broker.proc.pid
        self.broker.stop()
        self.note(f"broker stopped (SIGTERM pid {pid}, port {self.broker.port})")
        time.sleep(self.args.broker_down_seconds)
        self.broker.start()
        self.note(f"broker started again (pid {self.broker.proc.pid})")

    def stop_service(self, timeout: float = 60) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.runs[-1].update(ended=time.time(), exit=rc)
        self.note(f"service stopped with SIGTERM: exit {rc}")
        return rc

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.rx.stop()
        if self.sub is not None:
            self.sub.close()
        self.broker.stop()


def run_drill(args, work: Path) -> dict:
    import soundfile as sf

    from machine_monitor.service.store import EventStore
    from tests.test_service_sinks import Subscriber, wait_for

    machines = [f"m{i}" for i in range(args.machines)]
    load_start = os.getloadavg()
    say("training the default detector on 1 min of the synthetic machine ...")
    model = work / "model"
    train_model(model)
    # Each run replays its files from the start: they must outlast the longest run.
    seconds = 40 + args.down_seconds + args.tail_seconds + 60
    say(f"writing {len(machines)} replays of {seconds:.0f} s (fault {args.fault_seconds:g} s, "
        f"normal {args.normal_seconds:g} s, in turn) ...")
    for i, m in enumerate(machines):
        y = machine_audio(seconds, seed=100 * (i + 1), normal_seconds=args.normal_seconds,
                          fault_seconds=args.fault_seconds,
                          lead_seconds=4 + i * (args.fault_seconds + args.normal_seconds) / len(machines))
        sf.write(work / f"{m}.wav", y, SR, subtype="PCM_16")

    drill = Drill(args, work)
    rc, t0, alerts_down, down, sub_ids = None, None, [], None, []
    try:
        drill.broker.start()
        drill.sub = Subscriber(drill.broker.port, client_id="drill-subscriber")
        conf = write_config(work, model, machines, rx_url=drill.rx.url, broker_port=drill.broker.port)
        store = EventStore(work / "events.db")
        drill.note(f"webhook receiver down (port {drill.rx.port}); broker on port {drill.broker.port}")
        drill.start_service(conf)
        first = wait_for(lambda: store.events(kinds=["alert"], limit=1), 120, "the first alert", interval=0.05)[0]
        t0 = first["epoch"]
        drill.note(f"first alert: event {first['id']} ({first['machine']})")
        down_end = t0 + args.down_seconds
        # The kills spread over the outage; the broker restarts between the first two (or mid-outage).
        plan = [(t0 + args.down_seconds * (k + 1) / (args.kills + 1), "kill") for k in range(args.kills)]
        marks = [t for t, _ in plan] + [down_end]
        broker_at = (marks[0] + marks[1]) / 2 if args.kills else t0 + args.down_seconds / 2
        for at, action in sorted([*plan, (broker_at, "broker")]):
            time.sleep(max(0.0, at - time.time()))
            if action == "kill":
                drill.kill_mid_alert(store, machines)
                drill.start_service(conf)
            else:
                drill.restart_broker()
        time.sleep(max(0.0, down_end - time.time()))
        down = (drill.timeline[0][0], time.time())
        drill.rx.start()
        alerts_down = store.events(kinds=["alert"], since_epoch=t0, until_epoch=down[1], limit=None)
        drill.note(f"webhook receiver up again after {down[1] - down[0]:.0f} s ({down[1] - t0:.0f} s of alerts: "
                   f"{len(alerts_down)} alerts, {store.last_id()} events stored so far)")
        time.sleep(args.tail_seconds)

        def caught_up():
            last = store.last_id()
            return all(c >= last for c in store.cursors().values())

        wait_for(caught_up, 120, "every sink to catch up", interval=0.2)
        rc = drill.stop_service()
        n = store.count()
        wait_for(lambda: len(set(drill.sub.event_ids())) >= n, 15, "the MQTT subscriber to get every event")
    except AssertionError as exc:  # a wait that timed out: count what was delivered all the same
        drill.note(f"drill incomplete: {exc}")
    finally:
        time.sleep(0.5)  # the last deliveries in flight
        if drill.sub is not None:
            sub_ids = drill.sub.event_ids()
        drill.close()
    events = EventStore(work / "events.db").events(limit=None)
    produced = [e["id"] for e in events]
    if down is None:
        down = (drill.timeline[0][0], time.time())
    t0 = down[0] if t0 is None else t0
    jsonl, torn = jsonl_ids(work / "alerts.jsonl")
    got = {"jsonl": jsonl, "webhook": list(drill.rx.received), "mqtt": sub_ids}
    kinds = collections.Counter(e["event"] for e in events)
    restarted = [e for e in events if e["event"] == "alert_end" and e.get("reason") == "monitor restarted"]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": load_start,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machines": machines,
        "events": len(produced),
        "kinds": dict(kinds),
        "silenced_events": sum(bool(e.get("silenced")) for e in events),
        "receiver_down_seconds": round(down[1] - down[0], 1),
        "alert_seconds_while_down": round(down[1] - t0, 1),
        "alerts_while_down": len(alerts_down),
        "runs": drill.runs,
        "final_exit": rc,
        "left_open_by_kills": sum(len(r.get("open_alerts", [])) for r in drill.runs),
        "closed_as_monitor_restarted": len(restarted),
        "jsonl_torn_lines": torn,
        "timeline": [(round(t - drill.timeline[0][0], 1), what) for t, what in drill.timeline],
        "counts": {name: count(produced, ids) for name, ids in got.items()},
    }


def report(r: dict) -> bool:
    print(f"fault drill {r['date']}: {len(r['machines'])} machines; load average {r['load_average_start'][0]:.2f} "
          f"at the start, {r['load_average'][0]:.2f} at the end (1 min), on {r['cpus']} cores")
    print(f"webhook receiver down {r['receiver_down_seconds']:.0f} s ({r['alert_seconds_while_down']:.0f} s from the "
          f"first alert, {r['alerts_while_down']} alerts meanwhile); broker restarted once; "
          f"{sum(x.get('exit') == 'SIGKILL' for x in r['runs'])} x SIGKILL mid-alert; "
          f"{len(r['runs'])} runs, last exit {r['final_exit']}")
    print(f"events produced: {r['events']} ({', '.join(f'{k} {v}' for k, v in sorted(r['kinds'].items()))})")
    print(f"alerts left open by the kills: {r['left_open_by_kills']}, closed at restart as 'monitor restarted': "
          f"{r['closed_as_monitor_restarted']}; torn JSONL lines: {r['jsonl_torn_lines']}")
    cols = ("produced", "delivered", "lost", "duplicated", "out_of_order")
    print(f"\n{'sink':<8} " + " ".join(f"{c.replace('_', ' '):>12}" for c in cols))
    ok = True
    for name, c in r["counts"].items():
        print(f"{name:<8} " + " ".join(f"{c[k]:>12}" for k in cols))
        ok &= c["lost"] == 0 and c["duplicated"] == 0 and c["out_of_order"] == 0 and c["unknown"] == 0
        if c["unknown"]:
            print(f"  {name}: {c['unknown']} delivered ids the store does not hold")
    print(f"\n{'PASS' if ok else 'FAIL'}: 0 lost, 0 duplicated, in order, on every sink"
          + ("" if ok else " does not hold"))
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--down-seconds", type=float, default=120.0,
                   help="how long the webhook receiver is down, from the first alert (default 120)")
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs of the service mid-alert (default 2)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the counts and timeline here")
    p.add_argument("--machines", type=int, default=3, help="file-replay machines (default 3)")
    p.add_argument("--fault-seconds", type=float, default=6.0, help="length of each fault in the audio (default 6)")
    p.add_argument("--normal-seconds", type=float, default=8.0, help="normal sound between faults (default 8)")
    p.add_argument("--broker-down-seconds", type=float, default=5.0, help="broker stopped this long (default 5)")
    p.add_argument("--tail-seconds", type=float, default=20.0,
                   help="live delivery after the receiver is back, before SIGTERM (default 20)")
    p.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one, removed "
                   "when the drill passes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments within an alert")
    args = p.parse_args(argv)
    if args.kills < 0 or args.down_seconds <= 0 or args.machines < 1:
        p.error("--kills >= 0, --down-seconds > 0 and --machines >= 1")
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print("fault_drill: mosquitto not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    random.seed(args.seed)
    work = args.keep or Path(tempfile.mkdtemp(prefix="fault_drill_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "broker").mkdir(exist_ok=True)
    t = time.monotonic()
    try:
        result = run_drill(args, work)
    except (RuntimeError, OSError) as exc:
        print(f"fault_drill: {exc} (work folder {work})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    result["wall_seconds"] = round(time.monotonic() - t, 1)
    ok = report(result)
    print(f"wall time {result['wall_seconds']:.0f} s; work folder {work}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if ok and args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
