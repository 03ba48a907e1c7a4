"""External OTLP collectors Loomview forwards spans to, read from ``LOOMVIEW_EXPORTERS``.

The variable holds a JSON list, one object per collector::

    [{"name": "tempo", "endpoint": "http://tempo:4318/v1/traces"},
     {"name": "honeycomb", "endpoint": "https://api.honeycomb.io:443", "protocol": "grpc",
      "headers": {"x-honeycomb-team": "..."}, "workflow_types": ["triage"]}]

Keys: ``name`` (required, letters, digits, ``-`` and ``_``; the forwarder's
cursor is kept under it, so renaming a collector starts it from scratch),
``endpoint`` (required), ``protocol`` (``http/protobuf``, ``http/json`` or
``grpc``), ``headers`` (object), ``insecure`` (gRPC: plaintext; HTTP: skip
certificate verification), ``ca_cert`` (path to a PEM file), ``workflow_types``
(only spans of these workflow types), ``timeout`` (seconds), ``batch_size``,
``project`` (the project the collector files the spans under: sent as the
``openinference.project.name`` resource attribute and the ``x-project-name``
header, as Phoenix reads them).

Header values are secrets: nothing outside the transport sees them; the UI
and logs use ``masked_headers``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

from telemetry.vocab import PROJECT_HEADER

EXPORTERS_ENV = "LOOMVIEW_EXPORTERS"
HTTP_PROTOBUF = "http/protobuf"
HTTP_JSON = "http/json"
GRPC = "grpc"
PROTOCOLS = (HTTP_PROTOBUF, HTTP_JSON, GRPC)
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000
MASK = "••••••"
_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_KEYS = frozenset(
    {
        "name",
        "endpoint",
        "protocol",
        "headers",
        "insecure",
        "ca_cert",
        "workflow_types",
        "timeout",
        "batch_size",
        "project",
    }
)


@dataclass(frozen=True)
class Exporter:
    name: str
    endpoint: str = field(repr=False)  # may hold a password: see display_endpoint
    protocol: str = HTTP_PROTOBUF
    headers: dict[str, str] = field(default_factory=dict, hash=False, repr=False)
    insecure: bool = False
    ca_cert: str = ""
    workflow_types: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    batch_size: int = DEFAULT_BATCH_SIZE
    project: str = ""

    @property
    def send_headers(self) -> dict[str, str]:
        """The headers every export carries: the configured ones, and the project's."""
        if self.project and not any(k.lower() == PROJECT_HEADER for k in self.headers):
            return {**self.headers, PROJECT_HEADER: self.project}
        return self.headers

    @property
    def masked_headers(self) -> dict[str, str]:
        return dict.fromkeys(self.headers, MASK)

    @property
    def display_endpoint(self) -> str:
        """The endpoint without any password in it."""
        parts = urlsplit(self.endpoint)
        if parts.password is None:
            return self.endpoint
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{parts.username}:{MASK}@{host}{port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def tls(self) -> str:
        if self.insecure:
            return "insecure (no verification)" if self.protocol != GRPC else "plaintext"
        if self.ca_cert:
            return f"CA {self.ca_cert}"
        if self.endpoint.startswith("https://"):
            return "system CAs"
        return "plaintext" if self.protocol == GRPC or self.endpoint.startswith("http:") else ""


def _fail(where: str, message: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{EXPORTERS_ENV}: {where}: {message}")


def _number(where: str, key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _fail(where, f"{key!r} must be a number from {low:g} to {high:g}")
    return float(value)


def _exporter(index: int, item: Any) -> Exporter:
    where = f"collector #{index + 1}"
    if not isinstance(item, dict):
        raise _fail(where, "must be a JSON object")
    unknown = set(item) - _KEYS
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(where, "'name' must be 1-64 letters, digits, '-' or '_'")
    where = f"collector {name!r}"
    protocol = item.get("protocol", HTTP_PROTOBUF)
    if protocol not in PROTOCOLS:
        raise _fail(where, f"'protocol' must be one of {', '.join(PROTOCOLS)}")
    endpoint = item.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise _fail(where, "'endpoint' is required")
    endpoint = endpoint.strip()
    parts = urlsplit(endpoint if "://" in endpoint else f"grpc://{endpoint}")
    if protocol != GRPC:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _fail(where, f"'endpoint' {endpoint!r} must be an http:// or https:// URL")
        if parts.path in ("", "/"):
            # Like OTEL_EXPORTER_OTLP_ENDPOINT: a base URL gets the signal path.
            endpoint = urlunsplit(parts._replace(path="/v1/traces"))
    elif parts.scheme not in ("grpc", "http", "https") or not parts.hostname or not parts.port:
        raise _fail(where, f"'endpoint' {endpoint!r} must be host:port or http(s)://host:port")
    headers = item.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in headers.items()
    ):
        raise _fail(where, "'headers' must be an object of header name -> string value")
    if protocol == GRPC and any(k != k.lower() for k in headers):
        # gRPC metadata keys must be lowercase; fail here, not on every export.
        headers = {k.lower(): v for k, v in headers.items()}
    insecure = item.get("insecure", False)
    if not isinstance(insecure, bool):
        raise _fail(where, "'insecure' must be true or false")
    ca_cert = item.get("ca_cert", "")
    if not isinstance(ca_cert, str):
        raise _fail(where, "'ca_cert' must be a file path")
    if ca_cert and not Path(ca_cert).is_file():
        raise _fail(where, f"'ca_cert' {ca_cert!r} is not a readable file")
    types = item.get("workflow_types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
        raise _fail(where, "'workflow_types' must be a list of workflow type names")
    project = item.get("project", "")
    if not isinstance(project, str) or len(project) > 200 or not project.isprintable():
        raise _fail(where, "'project' must be a project name (at most 200 printable characters)")
    project = project.strip()
    timeout = _number(where, "timeout", item.get("timeout", DEFAULT_TIMEOUT_SECONDS), 0.1, 600)
    batch = _number(
        where, "batch_size", item.get("batch_size", DEFAULT_BATCH_SIZE), 1, MAX_BATCH_SIZE
    )
    return Exporter(
        name=name,
        endpoint=endpoint,
        protocol=protocol,
        headers=dict(headers),
        insecure=insecure,
        ca_cert=ca_cert,
        workflow_types=tuple(types),
        timeout=timeout,
        batch_size=int(batch),
        project=project,
    )


def load_exporters(raw: str) -> list[Exporter]:
    """Collectors from the JSON in ``raw`` (may be empty); ImproperlyConfigured when malformed."""
    if not raw.strip():
        return []
    try:
        items = json.loads(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{EXPORTERS_ENV} is not valid JSON: {exc}") from None
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise ImproperlyConfigured(f"{EXPORTERS_ENV} must be a JSON list of collector objects")
    exporters = [_exporter(i, item) for i, item in enumerate(items)]
    names = [e.name for e in exporters]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ImproperlyConfigured(f"{EXPORTERS_ENV}: duplicate collector name(s) {duplicates}")
    return exporters


def configured() -> list[Exporter]:
    """The collectors in settings (tests override ``LOOMVIEW_EXPORTERS`` with a list)."""
    from django.conf import settings

    value = getattr(settings, "LOOMVIEW_EXPORTERS", [])
    if isinstance(value, str):
        return load_exporters(value)
    return list(value)


def by_name(name: str) -> Exporter | None:
    return next((e for e in configured() if e.name == name), None)
