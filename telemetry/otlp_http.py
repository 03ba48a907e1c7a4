"""The worker's OTLP/HTTP exporter to Loomview's receiver: lean, and never in the way.

The stock ``OTLPSpanExporter`` costs the worker about 60 µs of CPU per span to
encode (a protobuf object per attribute) and about 1 ms per request in
``requests``; spans are small and many, so that was most of what tracing cost
a worker. This exporter sends the same OTLP/protobuf bytes
(:mod:`telemetry.wire`) over one kept-alive ``http.client`` connection (urllib3's
pool cost about twice its CPU per request: ~0.9 against ~0.5 ms here), and
retries like the stock one: up to 6 attempts within the timeout, on 429, 502,
503, 504 and connection errors, backing off exponentially with jitter or as
``Retry-After`` says. A kept-alive connection the receiver has closed is
opened again at once, not counted as an attempt. Like every exporter it never
raises into the application: a failure is logged and returned.
"""

from __future__ import annotations

import collections
import http.client
import logging
import os
import random
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from telemetry import wire

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_ATTEMPTS = 6
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
JITTER = 0.2


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _dropped(sock: socket.socket) -> bool:
    """Whether the receiver closed this idle kept-alive connection (it reads as ready: EOF)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


class WireSpanExporter(SpanExporter):
    """OTLP/HTTP protobuf to one endpoint (the dashboard's ``/v1/traces``)."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.endpoint = endpoint
        self._headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self._timeout = timeout
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {endpoint!r}")
        self._secure = url.scheme == "https"
        self._host, self._port = url.hostname, url.port
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._conn: http.client.HTTPConnection | None = None
        self._shutdown = threading.Event()

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """The kept-alive connection (and whether it was used before), or a new one."""
        conn = self._conn
        if conn is not None and conn.sock is not None:
            if _dropped(conn.sock):
                conn.close()
            else:
                conn.sock.settimeout(timeout)
                return conn, True
        if conn is None:
            kind = http.client.HTTPSConnection if self._secure else http.client.HTTPConnection
            conn = self._conn = kind(self._host, self._port, timeout=timeout)
        conn.timeout = timeout
        return conn, False

    def _post(self, body: bytes, timeout: float) -> tuple[int, bytes, str | None]:
        """One POST: status, body and Retry-After; a stale kept-alive connection is
        opened again once. Connection errors raise (OSError, HTTPException)."""
        for _ in range(2):
            conn, reused = self._connection(timeout)
            try:
                conn.request("POST", self._path, body=body, headers=self._headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                if reused and not self._shutdown.is_set():
                    continue
                raise
            return response.status, data, response.getheader("Retry-After")
        raise http.client.HTTPException("unreachable")  # pragma: no cover

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown.is_set():
            logger.warning("exporter already shut down, dropping %d spans", len(spans))
            return SpanExportResult.FAILURE
        try:
            body = wire.encode_spans(spans)
        except Exception:
            logger.exception("could not encode %d spans", len(spans))
            return SpanExportResult.FAILURE
        return self.send(body, len(spans))

    def send(self, body: bytes, count: int) -> SpanExportResult:
        """POST an encoded ``ExportTraceServiceRequest`` of ``count`` spans, retrying as
        :meth:`export` does."""
        if self._shutdown.is_set():
            logger.warning("exporter already shut down, dropping %d spans", count)
            return SpanExportResult.FAILURE
        deadline = time.monotonic() + self._timeout
        for attempt in range(MAX_ATTEMPTS):
            backoff = 2**attempt * random.uniform(1 - JITTER, 1 + JITTER)
            remaining = deadline - time.monotonic()
            try:
                status, data, retry_after = self._post(body, max(remaining, 0.001))
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timeout
                problem = f"{type(error).__name__}: {error}"
            else:
                if 200 <= status < 400:
                    return SpanExportResult.SUCCESS
                problem = f"HTTP {status}: {data[:200]!r}"
                if status not in RETRYABLE_STATUS:
                    logger.error("spans rejected by %s: %s", self.endpoint, problem)
                    return SpanExportResult.FAILURE
                after = _retry_after(retry_after)
                if after is not None:
                    backoff = after
            if attempt + 1 == MAX_ATTEMPTS or backoff > deadline - time.monotonic():
                break
            logger.warning("exporting spans failed (%s), retrying in %.2f s", problem, backoff)
            if self._shutdown.wait(backoff):
                break
        logger.error("could not export %d spans to %s: %s", count, self.endpoint, problem)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._shutdown.set()
        conn = self._conn
        if conn is not None:
            conn.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class WireBatchSpanProcessor(SpanProcessor):
    """The SDK's ``BatchSpanProcessor`` for a :class:`WireSpanExporter`, each span
    encoded when it ends.

    The same batching: a bounded queue (the oldest spans dropped when full, with a
    warning), a thread that exports every ``schedule_delay_millis`` or as soon as a
    full batch waits, ``force_flush`` and ``shutdown`` that export what is queued,
    instrumentation suppressed while exporting, and a fresh thread after a fork.
    What waits in the queue is bytes (:func:`telemetry.wire.span_record`), not the
    span: a span kept for its export outlives the young collections and is
    promoted to the oldest generation, where it counts towards the next full
    collection; in a worker with hundreds of live workflow sandboxes each full
    collection costs 100-200 ms of CPU, and the spans alone added about one
    a hundred workflows (``bench/README.md``, issue 16).
    """

    def __init__(
        self,
        exporter: WireSpanExporter,
        schedule_delay_millis: float = 5000,
        max_queue_size: int = 2048,
        max_export_batch_size: int = 512,
    ) -> None:
        if max_export_batch_size > max_queue_size:
            raise ValueError("max_export_batch_size must be at most max_queue_size")
        self._exporter = exporter
        self._delay = schedule_delay_millis / 1e3
        self._max_queue_size = max_queue_size
        self._max_batch = max_export_batch_size
        self._queue: collections.deque[wire.Record] = collections.deque(maxlen=max_queue_size)
        self._dropped = 0
        self._shutdown = False
        self._sources: list[Callable[[], None]] = []
        self._export_lock = threading.Lock()
        self._awaken = threading.Event()
        self._pid = os.getpid()
        self._thread = self._start_thread()
        if hasattr(os, "register_at_fork"):
            reinit = weakref.WeakMethod(self._after_fork)

            def after_in_child() -> None:
                method = reinit()
                if method is not None:
                    method()

            os.register_at_fork(after_in_child=after_in_child)

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(name="LoomviewSpanExport", target=self._work, daemon=True)
        thread.start()
        return thread

    def _after_fork(self) -> None:
        self._export_lock = threading.Lock()
        self._awaken = threading.Event()
        self._queue.clear()
        self._pid = os.getpid()
        self._thread = self._start_thread()

    def on_end(self, span: ReadableSpan) -> None:
        if self._shutdown:
            return
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        try:
            record = wire.span_record(span)
        except Exception:  # a span that cannot be encoded is lost, never the application
            logger.exception("could not encode span %r", span.name)
            return
        self.enqueue(record)

    def enqueue(self, record: wire.Record) -> None:
        """Queue a span already encoded (:func:`telemetry.wire.span_record`,
        :func:`telemetry.wire.record_of`) for export."""
        if self._shutdown:
            return
        queue = self._queue
        if len(queue) == self._max_queue_size:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                logger.warning("export queue full: %d spans dropped so far", self._dropped)
        queue.appendleft(record)
        if len(queue) >= self._max_batch and not self._awaken.is_set():
            self._awaken.set()

    def add_source(self, source: Callable[[], None]) -> None:
        """Have ``source`` (which enqueues spans it holds back) called before each
        export: the export thread's, a flush and the shutdown's."""
        self._sources.append(source)

    def _gather(self) -> None:
        for source in self._sources:
            try:
                source()
            except Exception:  # a source's bug is never the export's
                logger.exception("span source %r failed", source)

    def _work(self) -> None:
        while not self._shutdown:
            woken = self._awaken.wait(self._delay)
            if self._shutdown:
                break
            self._gather()
            self._export(everything=False, at_least_one=not woken)
            self._awaken.clear()
        self._export(everything=True)

    def _export(self, everything: bool, at_least_one: bool = False) -> None:
        with self._export_lock:
            queue, most, once = self._queue, self._max_batch, at_least_one
            while queue and (everything or once or len(queue) >= most):
                once = False
                count = min(most, len(queue))
                batch = [queue.pop() for _ in range(count)]  # the oldest are on the right
                token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
                try:
                    self._exporter.send(wire.encode_records(batch), count)
                except Exception:  # the exporter logs its own failures; this is a bug's
                    logger.exception("exporting %d spans failed", count)
                finally:
                    detach(token)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._shutdown:
            return False
        self._gather()
        self._export(everything=True)
        return True

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._gather()
        self._shutdown = True
        self._awaken.set()
        if self._pid == os.getpid():
            self._thread.join(30)
        self._exporter.shutdown()


def wire_processors(processor: SpanProcessor) -> list[WireBatchSpanProcessor] | None:
    """``processor`` as Loomview's batch processors, if it is one or several of them
    (a :class:`telemetry.otel.FanOutSpanProcessor` of them) and nothing else: then a
    span can be handed to them as bytes (:meth:`WireBatchSpanProcessor.enqueue`)."""
    found = getattr(processor, "processors", None)
    processors = list(found) if found is not None else [processor]
    wired = [each for each in processors if type(each) is WireBatchSpanProcessor]
    return wired if wired and len(wired) == len(processors) else None
