"""Scan archives of recordings: many files, one row each (scoring one file is ``filescore.py``).

Work runs in this process, in a pool of worker *processes* (feature work is CPU
bound; each worker loads the model once and pins BLAS/torch to one thread), or on
a dask.distributed cluster. :func:`scan_files` yields rows as they complete.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from machine_monitor.audio.io import LOSSY_FORMATS
from machine_monitor.errors import ConfigError
from machine_monitor.filescore import RECORD_FIELDS, ScanRow, score_files

log = logging.getLogger(__name__)

#: Audio (bytes on disk) a worker process must have to earn its start: a worker costs about
#: 2 s (torch, the model) before its first file, what scoring ~800 ten-second clips costs in
#: this process (256 MiB = 2.3 h of 16-bit 16 kHz mono). Measured: 1,200 ten-second files
#: took 3.8-4.3 s in one process and 11.5-12.8 s with two fresh workers (2 cores).
MIN_BYTES_PER_WORKER = 256 * 2**20
FORMATS = ("table", "csv", "jsonl")
ORDERS = ("score", "input", "completion")


# -- workers -----------------------------------------------------------------------
_DETECTORS: dict = {}
_LOADS = 0  # models this process has loaded (see models_loaded)


def pin_threads(n: int = 1) -> None:
    """Limit BLAS/OpenMP and torch to ``n`` threads in this process (one per worker process)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    import torch

    torch.set_num_threads(n)


def _detector(model: str, channel: int | None):
    """This process's detector for ``model``, loaded on first use (again if the model is re-saved)."""
    try:
        stamp = os.stat(Path(model) / "model.json").st_mtime_ns  # long-lived dask workers outlive a retrain
    except OSError:
        stamp = None  # load_detector says what is wrong
    key = (model, channel, stamp)
    det = _DETECTORS.get(key)
    if det is None:
        from machine_monitor.detectors.registry import load_detector

        pin_threads(1)
        det = load_detector(model, device="cpu")
        det.channel = channel
        _DETECTORS[key] = det
        global _LOADS
        _LOADS += 1
    return det


def models_loaded() -> int:
    """How many times this process loaded a model for scanning (once per worker and model version)."""
    return _LOADS


def _scan_chunk(model: str, chunk: Sequence[tuple[int, str]], options: dict) -> list[ScanRow]:
    """Worker task: score ``(index, path)`` pairs with this process's detector."""
    det = _detector(model, options.get("channel"))
    out = []
    # score_files: the chunk's short files through the networks together (same rows as score_file).
    rows = score_files(det, [path for _, path in chunk], segment_seconds=options.get("segment_seconds"),
                       hop_seconds=options.get("hop_seconds"))
    for (i, _), row in zip(chunk, rows):
        row.index = i
        out.append(row)
    return out


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def scan_files(det, files: Sequence[str | os.PathLike], *, model: str | os.PathLike | None = None,
               workers: int = 1, dask_address: str | None = None, segment_seconds: float | None = None,
               hop_seconds: float | None = None, chunk_size: int | None = None,
               executor=None) -> Iterator[ScanRow]:
    """Score files, yielding one :class:`ScanRow` per file as each completes.

    Parameters
    ----------
    det : Detector
        The fitted detector (used directly when scanning in this process).
    files : sequence of path-like
        ``row.index`` is the position in this list and ``row.path`` is ``str(files[i])``.
    model : path-like, optional
        The model directory ``det`` came from; required for ``workers > 1`` and dask,
        whose workers load it themselves (once each).
    workers : int
        Local worker processes at most; 1 scans in this process. A scan uses one worker per
        ``MIN_BYTES_PER_WORKER`` of audio files (fewer workers for less audio, none below that).
    dask_address : str, optional
        Scheduler address of an existing dask.distributed cluster (``tcp://host:8786``);
        its workers must see the model and the files under the same paths.
    executor : concurrent.futures.ProcessPoolExecutor, optional
        A pool to reuse (see :func:`worker_pool`), e.g. kept warm by a service
        that scans repeatedly; ``workers`` is then its size.
    """
    files = [str(f) for f in files]
    options = {"segment_seconds": segment_seconds, "hop_seconds": hop_seconds, "channel": det.channel}
    if (int(workers) > 1 or dask_address or executor is not None) and model is None:
        raise ConfigError("scanning with workers or dask needs the model directory (model=...)")
    if executor is not None:
        workers = max(2, int(workers))
    else:
        workers = max(1, min(int(workers), _audio_bytes(files) // MIN_BYTES_PER_WORKER))
    if dask_address:
        yield from _scan_dask(str(Path(model).resolve()), files, options, dask_address, chunk_size)
    elif workers > 1:
        yield from _scan_pool(str(model), files, options, workers, chunk_size, executor)
    else:
        for i, row in enumerate(score_files(det, files, segment_seconds=segment_seconds, hop_seconds=hop_seconds)):
            row.index = i
            yield row


def _audio_bytes(files: Sequence[str]) -> int:
    """Bytes on disk of the files (a missing one counts nothing: it becomes an error row)."""
    total = 0
    for f in files:
        with contextlib.suppress(OSError):
            total += os.stat(f).st_size
    return total


def worker_pool(workers: int, model: str | os.PathLike | None = None, *, channel: int | None = None):
    """A pool of ``workers`` processes; with ``model``, each has loaded it before this returns."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: forking a process that already runs torch/OpenMP threads can deadlock.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
    if model is not None:
        # One warm-up task per worker; each sleeps so that no worker takes two.
        list(pool.map(_warm, [(str(model), channel)] * workers))
    return pool


def _ignore_sigint() -> None:
    # Ctrl-C reaches every process of the terminal's group: the main process alone
    # handles it (keeps finished rows, stops the pool); workers finish their chunk.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _warm(args) -> int:
    import time

    _detector(*args)
    time.sleep(0.2)
    return os.getpid()


def _scan_pool(model: str, files: list[str], options: dict, workers: int, chunk_size: int | None, executor=None):
    from concurrent.futures import FIRST_COMPLETED, wait

    # Small chunks keep results streaming and the load balanced; a few files each
    # amortise the inter-process round trip.
    size = chunk_size or max(1, min(16, len(files) // (workers * 8)))
    pending_chunks = iter(_chunks(list(enumerate(files)), size))
    own = executor is None
    pool = worker_pool(workers) if own else executor
    running: set = set()
    try:
        while True:
            while len(running) < 4 * workers:  # bounded: memory stays flat in the number of files
                chunk = next(pending_chunks, None)
                if chunk is None:
                    break
                running.add(pool.submit(_scan_chunk, model, chunk, options))
            if not running:
                return
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                yield from fut.result()
    finally:
        for fut in running:
            fut.cancel()
        if own:
            pool.shutdown(wait=True, cancel_futures=True)


def _scan_dask(model: str, files: list[str], options: dict, address: str, chunk_size: int | None):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError("a dask scan needs dask.distributed: pip install 'machine-monitor[dask]'") from None
    absolute = [str(Path(f).absolute()) for f in files]  # workers may run in another directory
    try:
        client = Client(address, timeout="10s")
    except OSError as exc:
        raise ConfigError(f"cannot reach the dask scheduler at {address} ({exc})") from None
    with client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        size = chunk_size or max(1, min(16, len(files) // (n_workers * 8)))
        chunks = _chunks(list(enumerate(absolute)), size)
        futures = client.map(_scan_chunk, [model] * len(chunks), chunks, [options] * len(chunks), pure=False)
        for fut in as_completed(futures):
            for row in fut.result():
                row.path = files[row.index]
                yield row
            fut.release()


# -- output ------------------------------------------------------------------------
def sort_rows(rows: Iterable[ScanRow], order: str = "score") -> list[ScanRow]:
    """Rows by descending score (errors last) or by input position; ``completion`` keeps order."""
    rows = list(rows)
    if order == "score":
        # Scored files worst first, then stopped machines (nothing to judge), then errors.
        return sorted(rows, key=lambda r: (r.error is not None, r.stopped,
                                           -(r.score if r.score is not None else 0.0), r.index))
    if order == "input":
        return sorted(rows, key=lambda r: r.index)
    return rows


def _fmt(v, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


class RowWriter:
    """Writes rows as ``table``, ``csv`` or ``jsonl`` to a text stream, one flush per row."""

    def __init__(self, stream, fmt: str = "table", *, path_width: int = 40, header: bool = True,
                 flush: bool = True):
        if fmt not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.stream, self.fmt, self.width, self.flush = stream, fmt, path_width, flush
        self._csv = csv.DictWriter(stream, RECORD_FIELDS, lineterminator="\n") if fmt == "csv" else None
        if header:
            self.header()

    def header(self) -> None:
        if self.fmt == "table":
            self.stream.write(f"{'path':<{self.width}}  {'score':>10}  {'threshold':>10}  {'windows':>9}  "
                              f"{'worst_at':>9}  verdict\n")
        elif self.fmt == "csv":
            self._csv.writeheader()

    def write(self, row: ScanRow) -> None:
        if self.fmt == "table":
            windows = "-" if row.error else f"{row.n_anomalous}/{row.n_segments}"
            worst = _fmt(row.worst_offset, ".1f") + ("" if row.worst_offset is None else "s")
            verdict = f"error: {row.error}" if row.error else row.verdict
            if row.stopped:
                verdict += (" (machine off: far quieter than the training audio, or the input gain far lower; "
                            "not scored)")
            elif row.n_stopped:
                verdict += f" ({row.n_stopped} windows with the machine off not scored)"
            self.stream.write(f"{row.path:<{self.width}}  {_fmt(row.score):>10}  {_fmt(row.threshold):>10}  "
                              f"{windows:>9}  {worst:>9}  {verdict}\n")
        elif self.fmt == "csv":
            self._csv.writerow(row.to_record(flat=True))
        else:
            self.stream.write(json.dumps(row.to_record()) + "\n")
        if self.flush:  # an interrupted scan keeps every row it finished
            self.stream.flush()


def format_for(path: str | os.PathLike | None, fmt: str | None) -> str:
    """``fmt`` if given, else from the output file's suffix (.csv, .jsonl/.json), else ``table``."""
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower() if path else ""
    return {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}.get(suffix, "table")


def read_rows(path: str | os.PathLike, fmt: str) -> list[ScanRow]:
    """Rows already in an output file (for ``--resume``); a torn last line is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    if fmt not in ("csv", "jsonl"):
        raise ConfigError(f"{path}: resuming needs a csv or jsonl output, not {fmt}")
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        lines = lines[:-1]  # a scan killed mid-write: that file is simply scanned again
    try:
        records = csv.DictReader(lines) if fmt == "csv" else (json.loads(x) for x in lines if x.strip())
        return [ScanRow.from_record(rec) for rec in records]
    except (KeyError, TypeError, ValueError, AttributeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot resume from it, it is not a {fmt} scan output ({exc})") from None


def write_rows_atomic(path: str | os.PathLike, rows: Sequence[ScanRow], fmt: str, *, path_width: int = 40) -> None:
    """Write all rows to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            w = RowWriter(f, fmt, path_width=path_width, flush=False)
            for r in rows:
                w.write(r)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise




def chain_differences(det, files: Sequence[str], *, limit: int = 2_000) -> str | None:
    """One warning when inputs come through another chain than the training clips, else ``None``.

    Compared: the input sample rate, the channel count, and lossy (OGG, MP3) against
    lossless coding. Only file headers are read (the first ``limit`` files).
    """
    from machine_monitor.audio.io import audio_info
    from machine_monitor.errors import MachineMonitorError

    chain = det.training_chain() if hasattr(det, "training_chain") else None
    if chain is None:
        return None

    def family(fmt) -> str:
        return "lossy" if str(fmt).upper() in LOSSY_FORMATS else "lossless"

    odd, first, checked = 0, None, 0
    for f in files[:limit]:
        try:
            c = audio_info(f).chain()
        except MachineMonitorError:
            continue  # its row will say why
        checked += 1
        if (c["sample_rate"] != chain.get("sample_rate") or c["channels"] != chain.get("channels")
                or family(c["format"]) != family(chain.get("format"))):
            odd += 1
            first = first or (f, c)
    if not odd:
        return None
    f, c = first
    lossy_apart = getattr(det, "judges_lossy_apart", lambda: False)()
    return (f"{odd} of {checked} inputs come through another recording chain than the model's training clips "
            f"({chain.get('sample_rate')} Hz, {chain.get('format')}, {chain.get('channels')} ch), e.g. {f} "
            f"({c['sample_rate']} Hz, {c['format']}, {c['channels']} ch): the same sound recorded differently can "
            "score differently; train with clips from the chain you scan"
            + ("; lossy-coded files are judged against the thresholds calibrated on the training audio "
               "coded lossily (less sensitive)" if family(c["format"]) == "lossy" and lossy_apart else ""))


def same_file_key(path: str | os.PathLike) -> str:
    """A file's identity for matching rows: its resolved absolute path."""
    return os.path.realpath(path)


class OutputLock:
    """An exclusive, non-blocking lock on a scan output file (a hidden ``.NAME.lock`` beside it).

    A second scan writing the same output is refused at once (``ConfigError``) instead of
    the last one to finish silently overwriting the other's rows. The lock is the file
    lock of an open descriptor: a scan killed with ``kill -9`` leaves no stale lock behind.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._fd = None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the output is still written atomically
            return
        for _ in range(5):
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ConfigError(f"{self.path}: cannot lock it for writing ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip()
                os.close(fd)
                raise ConfigError(f"{self.path}: another scan{f' (process {holder})' if holder else ''} is "
                                  "writing it; wait for it to finish, or write to another file") from None
            try:  # the previous holder may have removed the lock file between our open and flock
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return
            os.close(fd)
        raise ConfigError(f"{self.path}: cannot lock it for writing (lock file keeps changing)")

    def release(self) -> None:
        if self._fd is not None:
            Path(self.lock_path).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


class ScanOutput:
    """Where a scan's rows go, and what a resumed scan still has to do.

    Without ``path``: rows go to ``stream``, sorted at the end (``order`` ``score`` or
    ``input``) or as they complete (``completion``). With ``path``: every row is appended
    and flushed as its file completes (an interrupted scan keeps them), and the file is
    rewritten in order at the end; ``resume`` keeps the scored rows already there (error
    rows are retried).

    Use as a context manager; :attr:`todo` lists the files still to score,
    :meth:`write` takes each new row, :meth:`finish` writes the final order.
    """

    def __init__(self, files: Sequence[str], *, path: str | os.PathLike | None = None, fmt: str | None = None,
                 order: str = "score", resume: bool = False, stream=None):
        if order not in ORDERS:
            raise ConfigError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
        if resume and path is None:
            raise ConfigError("resuming a scan needs the output file it wrote")
        self.path, self.order, self.stream = path, order, stream if stream is not None else sys.stdout
        self.fmt = format_for(path, fmt)
        # One scan writes an output file at a time: a second one is refused, not silently merged.
        self._lock = OutputLock(path) if path is not None else None
        try:
            kept = [r for r in (read_rows(path, self.fmt) if resume else []) if r.error is None]
        except BaseException:
            self.release()
            raise
        # Files are matched by their resolved path: `../x/a.wav` and `a.wav` are one file.
        position = {same_file_key(f): i for i, f in enumerate(files)}
        self.kept, done = [], set()
        for r in kept:
            key = same_file_key(r.path)
            if key in done:
                continue  # one file's row twice (an older scan under another spelling): keep the first
            done.add(key)
            r.index = position.get(key, len(files))
            self.kept.append(r)
        self.todo = [f for f in files if same_file_key(f) not in done]
        self.position = position
        self.width = max(4, *(len(f) for f in files), *(len(r.path) for r in self.kept))
        self.rows: list[ScanRow] = list(self.kept)
        self._file = self._writer = None

    def __enter__(self) -> ScanOutput:
        if self.path is not None:
            write_rows_atomic(self.path, self.kept, self.fmt, path_width=self.width)  # drops retried rows
            self._file = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - closed in __exit__
            self._writer = RowWriter(self._file, self.fmt, path_width=self.width, header=False)
        elif self.order == "completion":
            self._writer = RowWriter(self.stream, self.fmt, path_width=self.width)
        return self

    def write(self, row: ScanRow) -> None:
        row.index = self.position.get(same_file_key(row.path), row.index)
        self.rows.append(row)
        if self._writer is not None:
            self._writer.write(row)

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self) -> list[ScanRow]:
        """Write the rows in their final order (file rewritten, or printed); returns them in that order."""
        ordered = sort_rows(self.rows, self.order)
        try:
            if self.order == "completion":
                return ordered
            if self.path is not None:
                write_rows_atomic(self.path, ordered, self.fmt, path_width=self.width)
            else:
                w = RowWriter(self.stream, self.fmt, path_width=self.width, flush=False)
                for r in ordered:
                    w.write(r)
                self.stream.flush()
            return ordered
        finally:
            self.release()

    def release(self) -> None:
        """Let other scans write this output file (done by :meth:`finish`)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
