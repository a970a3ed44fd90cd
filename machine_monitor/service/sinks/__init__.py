"""Where events go: each sink is a delivery worker that reads the event store from its own cursor.

::

    store (every event, durable)  --cursor "log"-->     JsonlSink     (fsynced line; resumes after the last id)
                                  --cursor "ops"-->     WebhookSink   (HTTP POST JSON, 2xx = delivered)
                                  --cursor "broker"-->  MqttSink      (QoS 1 PUBACK = delivered; retained state)
                                  --cursor "pager"-->   CommandSink   (argv, no shell; event in MM_* and stdin)

A worker hands one event at a time to its sink and moves its cursor on only
when the sink returned (the receiver acknowledged it). A sink raises
:class:`DeliveryError` with ``retry=True`` when the receiver is unreachable:
the worker waits (``retry_seconds`` doubling up to ``retry_max_seconds``) and
tries the *same* event again, so a receiver that was down gets every event
afterwards, in order. ``retry=False`` (the receiver refused this event, a
command that cannot run) logs it and moves on.

Guarantee: at least once, in order, per sink. An event is delivered twice only
if the process dies between the receiver's acknowledgement and the cursor's
commit (a few microseconds); every payload carries the event's ``id`` so a
receiver can drop such a repeat. The JSONL sink does so itself.

The Prometheus endpoint (:mod:`.prometheus`) is not a cursor sink: it reports
the service's live state at each scrape.
"""

from __future__ import annotations

from machine_monitor.service.sinks.base import DeliveryError, DeliveryWorker, Sink

__all__ = ["DeliveryError", "DeliveryWorker", "Sink", "make_sink"]


def make_sink(cfg, *, machines=()) -> Sink:
    """The :class:`Sink` for a :class:`~machine_monitor.service.config.SinkConfig`."""
    o = cfg.options
    if cfg.type == "jsonl":
        from machine_monitor.service.sinks.jsonl import JsonlSink

        return JsonlSink(o["path"])
    if cfg.type == "webhook":
        from machine_monitor.service.sinks.webhook import WebhookSink

        return WebhookSink(o["url"], timeout=o["timeout"], headers=o["headers"])
    if cfg.type == "command":
        from machine_monitor.service.sinks.command import CommandSink

        return CommandSink(o["command"], timeout=o["timeout"])
    if cfg.type == "mqtt":
        from machine_monitor.service.sinks.mqtt import MqttSink

        return MqttSink(host=o["host"], port=o["port"], username=o["username"], password=o["password"],
                        prefix=o["prefix"], client_id=o["client_id"] or f"machine-monitor-{cfg.name}",
                        homeassistant=o["homeassistant"], discovery_prefix=o["discovery_prefix"], qos=o["qos"],
                        keepalive=o["keepalive"], timeout=o["timeout"], machines=machines)
    raise ValueError(f"unknown sink type {cfg.type!r}")
