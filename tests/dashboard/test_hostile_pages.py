"""Pages and the API under hostile input and faults (issue 9)."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from dashboard import runs as run_list

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "key",
    [
        (10**30, "wf", "run"),
        (-(10**30), "wf", "run"),
        (2**63, "wf", "run"),
        (1, "w" * 1200, "run"),
    ],
)
def test_an_out_of_range_cursor_is_a_400(
    logged_in_client: Client, closed_temporal_address: str, key: tuple[int, str, str]
) -> None:
    cursor = run_list.encode_cursor(key)
    response = logged_in_client.get("/api/runs/", {"cursor": cursor})
    assert response.status_code == 400
    assert "cursor" in json.dumps(json.loads(response.content))
    # The page shows the broken link as a form error, with the newest runs.
    page = logged_in_client.get("/", {"cursor": cursor})
    assert page.status_code == 200
    assert "This page link is broken" in page.content.decode()
