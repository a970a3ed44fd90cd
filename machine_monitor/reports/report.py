"""A scan as one self-contained HTML page (images embedded, no network access needed).

The page holds: a summary, the score distribution with the threshold, the evidence of
each top anomaly (the rendering the dashboard shows too, :mod:`machine_monitor.reports.evidence`:
its worst segment's log-mel spectrogram in Hz with a dB scale, the difference from the model's
normal spectrum, the window scores against the threshold with the anomalous span marked, for a
long file the score over the whole file, and a few sentences saying the same), and a table of
every file that sorts when a column header is clicked.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from machine_monitor.filescore import ScanRow
from machine_monitor.reports.evidence import evidence_data_uri, evidence_for_file

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em}th,td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left}
th{cursor:pointer;background:#f3f3f3;position:sticky;top:0}th:hover{background:#e3e3e3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.ANOMALY td{background:#fde8e8}tr.stopped td{color:#777}tr.error td{color:#a05a00}
.summary td{border:none;padding:.1em 1em .1em 0}figure{margin:1.5em 0}figcaption{font-size:.9em;color:#333}
figure img{max-width:100%}ul.evidence{margin:.3em 0 .5em;padding-left:1.4em}
"""

# Click a header to sort by it; numbers sort numerically (from data-v), a second click reverses.
_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows);
    var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v ?? a.cells[col].textContent;
      var y = b.cells[col].dataset.v ?? b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      if (!isNaN(nx) && !isNaN(ny)) return dir * (nx - ny);
      if (!isNaN(nx)) return -1; if (!isNaN(ny)) return 1;
      return dir * x.localeCompare(y);
    });
    rows.forEach(function(r){ tb.appendChild(r); });
  });
});
"""


def _data_uri(fig, fmt: str = "png") -> str:
    """The figure as an embedded image; JPEG for spectrograms (noise makes PNGs ~6x larger)."""
    buf = io.BytesIO()
    extra = {"pil_kwargs": {"quality": 85}} if fmt == "jpeg" else {}
    fig.savefig(buf, format=fmt, dpi=90, bbox_inches="tight", **extra)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def score_histogram(scores: np.ndarray, threshold: float) -> str:
    """PNG data URI: histogram of file scores with the threshold as a vertical line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3))
    ax = fig.add_subplot()
    s = np.asarray(scores, dtype=np.float64)
    if s.size:
        lo, hi = min(s.min(), threshold), max(s.max(), threshold)
        ax.hist(s, bins=np.linspace(lo, hi, 50) if hi > lo else 10, color="#4a7ab5")
    ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("file score (higher = more anomalous)")
    ax.set_ylabel("files")
    ax.legend()
    return _data_uri(fig)


def anomaly_evidence(row: ScanRow, det):
    """The evidence of one flagged file (:mod:`machine_monitor.reports.evidence`, as the dashboard shows it):
    its worst segment, and for a file scanned in several segments the score over the whole file."""
    return evidence_for_file(det, row.path, offset=row.worst_offset or 0.0, score=row.score,
                             threshold=row.threshold, whole_file=row.n_segments > 1)


def worst_window_figure(row: ScanRow, det) -> str:
    """JPEG data URI of :func:`anomaly_evidence`'s picture."""
    return evidence_data_uri(anomaly_evidence(row, det))


def _td(value, fmt: str = ".4g") -> str:
    if value is None:
        return '<td class="num" data-v="">-</td>'
    return f'<td class="num" data-v="{value!r}">{format(value, fmt)}</td>'


def render_report(rows: Sequence[ScanRow], det, *, model: str = "", elapsed: float | None = None,
                  top: int = 10) -> str:
    """The whole report as one HTML string (rows in the order given)."""
    thr = det.threshold_value_
    scored = [r for r in rows if r.score is not None]
    anomalies = sorted((r for r in scored if r.anomalous), key=lambda r: -r.score)
    errors = [r for r in rows if r.error is not None]
    stopped = [r for r in rows if r.stopped]
    audio_h = sum(r.duration or 0.0 for r in rows if r.error is None) / 3600
    esc = html.escape

    summary = [("model", esc(model)), ("threshold", f"{thr:.4g} ({esc(str(det.threshold_.get('method', '')))})"),
               ("files", f"{len(rows)}"), ("audio", f"{audio_h:.2f} h"),
               ("anomalous files", f"<b>{len(anomalies)}</b>"),
               ("machine stopped", f"{len(stopped)} (far quieter than the training audio: not scored)"),
               ("errors", f"{len(errors)}")]
    if elapsed:
        summary.append(("scan time", f"{elapsed:.1f} s ({audio_h * 3600 / elapsed:,.0f}x real time)"))
    hist = score_histogram([r.score for r in scored], thr)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>machine-monitor scan: {esc(model)}</title>",
             f"<style>{_CSS}</style></head><body><h1>machine-monitor scan</h1>",
             f"<p>{time.strftime('%Y-%m-%d %H:%M')}</p><table class='summary'>",
             *(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in summary), "</table>",
             "<h2>Score distribution</h2>",
             f"<img alt='histogram of file scores with the threshold' src='{hist}'>"]

    if anomalies and top > 0:
        parts.append(f"<h2>Top {min(top, len(anomalies))} anomalies</h2>")
        for r in anomalies[:top]:
            try:
                ev = anomaly_evidence(r, det)
                img = evidence_data_uri(ev)
            except Exception as exc:  # noqa: BLE001 - a figure that fails must not lose the report
                log.warning("no spectrogram for %s: %s", r.path, exc)
                parts.append(f"<p>{esc(r.path)}: no spectrogram ({esc(str(exc))})</p>")
                continue
            parts.append(f"<figure><figcaption><b>{esc(r.path)}</b>: score {r.score:.4g}, {r.n_anomalous}/"
                         f"{r.n_segments} windows anomalous, worst window from {r.worst_offset or 0:.1f} s"
                         "<ul class='evidence'>" + "".join(f"<li>{esc(s)}</li>" for s in ev.summary()) +
                         f"</ul></figcaption><img alt='evidence for {esc(r.path)}: log-mel spectrogram in Hz, "
                         f"difference from normal, window scores against the threshold' src='{img}'></figure>")

    parts.append("<h2>All files</h2><p>Click a column header to sort.</p><table class='sortable'><thead><tr>"
                 "<th>path</th><th>score</th><th>verdict</th><th>anomalous windows</th><th>windows</th>"
                 "<th>worst at (s)</th><th>duration (s)</th><th>error</th></tr></thead><tbody>")
    for r in rows:
        parts.append(f"<tr class='{r.verdict}'><td>{esc(r.path)}</td>{_td(r.score)}<td>{r.verdict}</td>"
                     f"{_td(r.n_anomalous, 'd')}{_td(r.n_segments, 'd')}{_td(r.worst_offset, '.1f')}"
                     f"{_td(r.duration, '.1f')}<td>{esc(r.error or '')}</td></tr>")
    parts.append(f"</tbody></table><script>{_JS}</script></body></html>")
    return "\n".join(parts)


def write_report(path: str | os.PathLike, rows: Sequence[ScanRow], det, **kwargs) -> Path:
    """Write :func:`render_report` to ``path`` (UTF-8); returns the path."""
    path = Path(path)
    path.write_text(render_report(rows, det, **kwargs), encoding="utf-8")
    return path
