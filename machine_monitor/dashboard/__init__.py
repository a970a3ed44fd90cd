"""The monitor's web page: every machine's state, live score timelines, alerts and their evidence.

``machine-monitor serve`` starts it (``[dashboard]`` in ``machines.toml``; default
``http://127.0.0.1:8765/``). Everything the page needs is served by this package (no CDN):
the page, its script and style, and uPlot (MIT, see ``static/README.md``) for the charts;
evidence pictures are rendered on the server by :mod:`machine_monitor.reports.evidence`.

Reads are open to anyone who can reach the bound address; actions (acknowledge an alert,
silence a machine) need the dashboard token. Binding to a non-loopback address without a
token is refused. The only files a request can reach are the package's static assets and
WAV files inside the evidence folder.

- :func:`create_app` builds the Starlette application for a running service;
- :func:`start_dashboard` runs it with uvicorn in a background thread;
- :func:`check_bind` is the bind/token rule on its own.
"""

from __future__ import annotations

from machine_monitor.dashboard.app import DashboardServer, check_bind, create_app, start_dashboard

__all__ = ["DashboardServer", "check_bind", "create_app", "start_dashboard"]
