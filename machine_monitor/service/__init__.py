"""``machine-monitor serve``: several machines, one alert lifecycle each, a durable event store, sinks.

Modules (each says more in its docstring):

- :mod:`~machine_monitor.service.config`    ``machines.toml``, validated up front
- :mod:`~machine_monitor.service.store`     SQLite (WAL) event store, delivery cursors, acks, silences
- :mod:`~machine_monitor.service.lifecycle` per-machine alert / health state machine
- :mod:`~machine_monitor.service.sinks`     delivery workers: jsonl, command, webhook, MQTT; Prometheus metrics
- :mod:`~machine_monitor.service.serve`     the runner: one thread per machine, signals, reload, hooks

Imports nothing heavy here.
"""
