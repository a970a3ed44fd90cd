"""Prometheus metrics endpoint (prometheus_client), read from the service's live state at each scrape.

Metrics, labelled by ``machine`` (``sink`` for the last one):

================================================  =======  ===========================================
``machine_monitor_score``                         gauge    last window score (NaN when not scored)
``machine_monitor_threshold``                     gauge    the level a window must exceed
``machine_monitor_state{state=...}``              gauge    1 for the machine's current state, else 0
``machine_monitor_alerts_total``                  counter  alert episodes (since the store began)
``machine_monitor_windows_total``                 counter  windows scored since the service started
``machine_monitor_dropped_blocks_total``          counter  audio blocks dropped (the loop fell behind)
``machine_monitor_input_overflows_total``         counter  overflows reported by the audio driver
``machine_monitor_hop_seconds``                   gauge    p99 wall time to process one window (last 1000)
``machine_monitor_hop_cpu_seconds``               gauge    p99 CPU time of one window (last 1000)
``machine_monitor_up``                            gauge    1 while the machine's input delivers audio
``machine_monitor_sink_backlog``                  gauge    events stored but not yet delivered, per sink
================================================  =======  ===========================================
"""

from __future__ import annotations

import math

STATES = ("normal", "pending", "firing", "acknowledged", "silenced", "signal_lost", "device_lost",
          "machine_stopped")


class ServiceCollector:
    """A prometheus_client collector over ``service.metrics()`` (see :class:`Service`)."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.service.metrics()
        score = GaugeMetricFamily("machine_monitor_score", "Last window score", labels=["machine"])
        thr = GaugeMetricFamily("machine_monitor_threshold", "Score a window must exceed", labels=["machine"])
        state = GaugeMetricFamily("machine_monitor_state", "Current state (1 = in it)", labels=["machine", "state"])
        alerts = CounterMetricFamily("machine_monitor_alerts", "Alert episodes", labels=["machine"])
        windows = CounterMetricFamily("machine_monitor_windows", "Windows scored", labels=["machine"])
        dropped = CounterMetricFamily("machine_monitor_dropped_blocks", "Audio blocks dropped", labels=["machine"])
        over = CounterMetricFamily("machine_monitor_input_overflows", "Input overflows", labels=["machine"])
        hop = GaugeMetricFamily("machine_monitor_hop_seconds", "p99 seconds to process a window", labels=["machine"])
        hop_cpu = GaugeMetricFamily("machine_monitor_hop_cpu_seconds", "p99 CPU seconds of a window",
                                    labels=["machine"])
        up = GaugeMetricFamily("machine_monitor_up", "Input delivering audio", labels=["machine"])
        for name, s in m["machines"].items():
            score.add_metric([name], math.nan if s["score"] is None else float(s["score"]))
            thr.add_metric([name], float(s["level"]))
            for st in STATES:
                state.add_metric([name, st], 1.0 if s["state"] == st else 0.0)
            alerts.add_metric([name], float(s["episodes"]))
            windows.add_metric([name], float(s["windows"]))
            dropped.add_metric([name], float(s["dropped_blocks"]))
            over.add_metric([name], float(s["overflows"]))
            hop.add_metric([name], float(s["hop_p99"]) if s["hop_p99"] is not None else math.nan)
            hop_cpu.add_metric([name], float(s["hop_cpu_p99"]) if s.get("hop_cpu_p99") is not None else math.nan)
            up.add_metric([name], 1.0 if s["up"] else 0.0)
        backlog = GaugeMetricFamily("machine_monitor_sink_backlog", "Events not yet delivered", labels=["sink"])
        for name, n in m["sinks"].items():
            backlog.add_metric([name], float(n))
        yield from (score, thr, state, alerts, windows, dropped, over, hop, hop_cpu, up, backlog)


def start_metrics_server(service, bind: str, port: int):
    """Serve ``/metrics`` on ``bind:port`` in a daemon thread; returns the HTTP server (``.shutdown()``)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(ServiceCollector(service))
    server, _thread = start_http_server(port, addr=bind, registry=registry)
    return server
