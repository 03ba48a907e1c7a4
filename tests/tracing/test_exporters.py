"""LOOMVIEW_EXPORTERS: parsing and validation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.conftest import ROOT
from tracing.exporters import GRPC, HTTP_PROTOBUF, MASK, load_exporters


def test_a_full_collector_list_parses() -> None:
    (http, grpc) = load_exporters(
        '[{"name": "tempo", "endpoint": "http://tempo:4318"},'
        ' {"name": "hc", "endpoint": "https://api.honeycomb.io:443", "protocol": "grpc",'
        '  "headers": {"X-Honeycomb-Team": "k"}, "workflow_types": ["triage"], "timeout": 5}]'
    )
    assert (http.protocol, http.endpoint) == (HTTP_PROTOBUF, "http://tempo:4318/v1/traces")
    assert grpc.protocol == GRPC and grpc.headers == {"x-honeycomb-team": "k"}
    assert grpc.masked_headers == {"x-honeycomb-team": MASK} and grpc.workflow_types == ("triage",)
    assert load_exporters("") == []


def test_a_project_is_sent_as_a_header_unless_one_is_configured() -> None:
    (phoenix, other) = load_exporters(
        '[{"name": "phoenix", "endpoint": "http://phoenix:6006", "project": "support"},'
        ' {"name": "other", "endpoint": "http://o:4318", "project": "p",'
        '  "headers": {"X-Project-Name": "theirs"}}]'
    )
    assert phoenix.project == "support"
    assert phoenix.send_headers == {"x-project-name": "support"}
    assert phoenix.masked_headers == {}
    assert other.send_headers == {"X-Project-Name": "theirs"}


def test_passwords_in_endpoints_are_not_displayed() -> None:
    (exporter,) = load_exporters(
        '[{"name": "a", "endpoint": "https://u:hunter2@h:4318/v1/traces"}]'
    )
    assert "hunter2" not in exporter.display_endpoint and "hunter2" not in repr(exporter)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        ('"x"', "JSON list"),
        ('[{"endpoint": "http://a"}]', "'name'"),
        ('[{"name": "a"}]', "'endpoint' is required"),
        ('[{"name": "a", "endpoint": "ftp://a"}]', "http:// or https://"),
        ('[{"name": "a", "endpoint": "a", "protocol": "grpc"}]', "host:port"),
        ('[{"name": "a", "endpoint": "http://a", "protocol": "thrift"}]', "'protocol'"),
        ('[{"name": "a", "endpoint": "http://a", "headers": {"k": 1}}]', "'headers'"),
        ('[{"name": "a", "endpoint": "http://a", "insecure": "yes"}]', "'insecure'"),
        ('[{"name": "a", "endpoint": "http://a", "ca_cert": "/nope.pem"}]', "'ca_cert'"),
        ('[{"name": "a", "endpoint": "http://a", "timeout": 0}]', "'timeout'"),
        ('[{"name": "a", "endpoint": "http://a", "colour": "red"}]', "unknown key"),
        ('[{"name": "a", "endpoint": "http://a", "project": 7}]', "'project'"),
        ('[{"name": "a", "endpoint": "http://a", "project": "a\\nb"}]', "'project'"),
        (
            '[{"name": "a", "endpoint": "http://a"}, {"name": "a", "endpoint": "http://b"}]',
            "duplicate",
        ),
    ],
)
def test_bad_configuration_is_refused(raw: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="LOOMVIEW_EXPORTERS") as error:
        load_exporters(raw)
    assert message in str(error.value)


def test_settings_refuse_to_load_with_bad_exporters(tmp_path: Path) -> None:
    env = {**os.environ, "LOOMVIEW_EXPORTERS": "[{}]", "LOOMVIEW_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", "import dashboard.settings"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "LOOMVIEW_EXPORTERS" in result.stderr
