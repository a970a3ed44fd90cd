"""Webhook sink: HTTP POST of the event as JSON; any 2xx means delivered.

Headers: ``Content-Type: application/json`` and ``X-Machine-Monitor-Event-Id``
(the store id, for receivers that drop repeats), plus any configured ones.
Connection errors, timeouts, 5xx, 408 and 429 are retried (same event, with
backoff); another 4xx means the receiver refuses this event: logged, skipped.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from machine_monitor.service.sinks.base import DeliveryError, Sink


class WebhookSink(Sink):
    def __init__(self, url: str, *, timeout: float = 5.0, headers: dict | None = None):
        self.url = url
        self.timeout = timeout
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}
        # A factory PC's proxy settings must not reroute a plant-internal webhook.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def deliver(self, event: dict) -> None:
        body = json.dumps(event).encode()
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "machine-monitor",
            "X-Machine-Monitor-Event-Id": str(event["id"]), **self.headers})
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            retry = exc.code >= 500 or exc.code in (408, 429)
            raise DeliveryError(f"{self.url}: HTTP {exc.code} {exc.reason}", retry=retry) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"{self.url}: {reason}") from None
