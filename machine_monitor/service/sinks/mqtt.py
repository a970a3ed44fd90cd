"""MQTT sink (paho-mqtt): events, retained per-machine state, a last will, Home Assistant discovery.

Topics (``prefix`` defaults to ``machine-monitor``):

- ``<prefix>/<machine>/event``  every event as JSON, QoS 1 (``<prefix>/service/event`` for
  service-wide events such as ``heartbeat``); delivered = the broker's PUBACK
- ``<prefix>/<machine>/state``  retained JSON ``{"state", "event", "id", "epoch"}``; ``state`` is
  ``normal``, ``firing``, ``acknowledged`` or an active health state (``device_lost``,
  ``signal_lost``, ``machine_stopped``, ``clipping``)
- ``<prefix>/status``           retained ``online``; the broker publishes the last will
  ``offline`` when the service dies or loses its connection
- with ``homeassistant = true``: retained discovery configs
  ``<discovery_prefix>/sensor/machine_monitor_<machine>/config`` (a state sensor per machine,
  available while ``<prefix>/status`` is ``online``)
- ``<prefix>/delivered/<client_id>``  retained id of the last event this sink published

A message the broker has not acknowledged stays in paho's queue and is sent
again after a reconnect; the worker waits for that same message instead of
publishing a second copy. Across a restart (``kill -9`` after the broker's PUBACK
but before the store's cursor moved), the retained ``delivered`` marker says how far
the broker already got: it is published right behind each event on the same
connection, so the broker holds every event up to it (MQTT keeps one client's
messages in order), and the restarted sink skips those instead of publishing them
twice. A broker that lost its retained messages (no persistence) only reopens the
old at-least-once window.
"""

from __future__ import annotations

import json
import logging
import threading

from machine_monitor.service.sinks.base import DeliveryError, Sink

log = logging.getLogger(__name__)

#: How long after subscribing to the delivered marker its absence is taken as "none".
MARKER_WAIT_SECONDS = 0.5
_HEALTH_ORDER = ("device_lost", "signal_lost", "machine_stopped", "clipping")
_CLEARS = {"signal_restored": "signal_lost", "device_restored": "device_lost", "clipping_cleared": "clipping",
           "machine_running": "machine_stopped"}


class MqttSink(Sink):
    def __init__(self, *, host: str = "127.0.0.1", port: int = 1883, username: str | None = None,
                 password: str | None = None, prefix: str = "machine-monitor", client_id: str = "machine-monitor",
                 homeassistant: bool = False, discovery_prefix: str = "homeassistant", qos: int = 1,
                 keepalive: int = 30, timeout: float = 10.0, machines=()):
        self.host, self.port = host, int(port)
        self.username, self.password = username, password
        self.prefix = prefix.rstrip("/")
        self.client_id = client_id
        self.homeassistant = homeassistant
        self.discovery_prefix = discovery_prefix
        self.qos = qos
        self.keepalive = keepalive
        self.timeout = timeout
        self.machines = list(machines)
        self._client = None
        self._acked: set[int] = set()
        self._cond = threading.Condition()
        self._pending: dict[int, int] = {}  # event id -> mid of its publish
        self._state: dict[str, dict] = {}  # machine -> {"firing", "acked", "health"}
        self._broker_last = 0  # the retained marker: the broker holds every event up to it
        self._synced = threading.Event()  # the marker has been read (or there is none)

    @property
    def marker_topic(self) -> str:
        return f"{self.prefix}/delivered/{self.client_id}"

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"

    def open(self) -> None:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        if self.username:
            c.username_pw_set(self.username, self.password)
        c.will_set(self.status_topic, "offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self._client = c
        c.connect_async(self.host, self.port, keepalive=self.keepalive)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            log.warning("MQTT %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        log.info("MQTT connected to %s:%d", self.host, self.port)
        if not self._synced.is_set():
            client.subscribe(self.marker_topic, qos=1)
        client.publish(self.status_topic, "online", qos=1, retain=True)
        if self.homeassistant:
            for m in self.machines:
                client.publish(f"{self.discovery_prefix}/sensor/machine_monitor_{m}/config",
                               json.dumps(self.discovery_config(m)), qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code != 0:
            log.warning("MQTT connection to %s:%d lost (%s); reconnecting", self.host, self.port, reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None) -> None:
        # A retained marker follows the SUBACK at once on the same connection; none within
        # a moment means there is none (a first start, or a broker without persistence).
        timer = threading.Timer(MARKER_WAIT_SECONDS, self._marker_read, args=(client,))
        timer.daemon = True
        timer.start()

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == self.marker_topic and not self._synced.is_set():
            try:
                self._broker_last = max(self._broker_last, int(msg.payload))
            except ValueError:
                log.warning("MQTT %s: unreadable marker %r ignored", self.marker_topic, msg.payload[:40])
            self._marker_read(client)

    def _marker_read(self, client) -> None:
        if not self._synced.is_set():
            self._synced.set()
            client.unsubscribe(self.marker_topic)  # its own later markers need not come back

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def discovery_config(self, machine: str) -> dict:
        """Home Assistant MQTT discovery payload of a machine's state sensor."""
        return {"name": f"{machine} state", "unique_id": f"machine_monitor_{machine}_state",
                "object_id": f"machine_monitor_{machine}", "state_topic": f"{self.prefix}/{machine}/state",
                "value_template": "{{ value_json.state }}", "json_attributes_topic": f"{self.prefix}/{machine}/state",
                "availability_topic": self.status_topic, "payload_available": "online",
                "payload_not_available": "offline", "icon": "mdi:ear-hearing",
                "device": {"identifiers": [f"machine_monitor_{machine}"], "name": machine,
                           "manufacturer": "machine-monitor", "model": "acoustic monitor"}}

    def topic(self, event: dict) -> str:
        return f"{self.prefix}/{event.get('machine') or 'service'}/event"

    def deliver(self, event: dict) -> None:
        if self._client is None:
            self.open()
        mid = self._pending.get(event["id"])
        if mid is None:
            if not self._client.is_connected():
                raise DeliveryError(f"MQTT broker {self.host}:{self.port} not connected")
            if not self._synced.wait(self.timeout):
                raise DeliveryError(f"MQTT broker {self.host}:{self.port}: no answer to the subscription of "
                                    f"{self.marker_topic}")
            if event["id"] <= self._broker_last:  # published before a restart: the broker has it
                return self._publish_state(event)
            info = self._client.publish(self.topic(event), json.dumps(event), qos=self.qos)
            self._client.publish(self.marker_topic, str(event["id"]), qos=1, retain=True)
            if self.qos == 0:
                return self._publish_state(event)
            mid = self._pending[event["id"]] = info.mid  # queued by paho even if the link just dropped
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._acked, timeout=self.timeout):
                raise DeliveryError(f"MQTT broker {self.host}:{self.port} did not acknowledge event {event['id']}")
            self._acked.discard(mid)
        del self._pending[event["id"]]
        self._publish_state(event)

    def _publish_state(self, event: dict) -> None:
        m = event.get("machine")
        if not m:
            return
        st = self._state.setdefault(m, {"firing": False, "acked": False, "health": set()})
        kind = event["event"]
        if kind in ("alert", "alert_repeat"):
            st["firing"], st["acked"] = True, st["acked"] and kind == "alert_repeat"
        elif kind == "alert_end":
            st["firing"], st["acked"] = False, False
        elif kind == "acknowledged":
            st["acked"] = True
        elif kind in _HEALTH_ORDER:
            st["health"].add(kind)
        elif kind in _CLEARS:
            st["health"].discard(_CLEARS[kind])
        else:
            return
        state = next((h for h in _HEALTH_ORDER if h in st["health"]), None)
        state = state or ("acknowledged" if st["firing"] and st["acked"] else "firing" if st["firing"] else "normal")
        payload = {"state": state, "event": kind, "id": event["id"], "epoch": event.get("epoch")}
        self._client.publish(f"{self.prefix}/{m}/state", json.dumps(payload), qos=1, retain=True)

    def close(self) -> None:
        c, self._client = self._client, None
        if c is None:
            return
        if c.is_connected():
            c.publish(self.status_topic, "offline", qos=1, retain=True).wait_for_publish(2.0)
        c.disconnect()
        c.loop_stop()
