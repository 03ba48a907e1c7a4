import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


def test_runs_page_redirects_anonymous_users_to_login(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_admin_requires_login_too(client: Client) -> None:
    response = client.get("/admin/")
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_login_page_is_open_and_renders_form(client: Client) -> None:
    response = client.get("/login/")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'name="username"' in body
    assert 'name="password"' in body
    assert "csrfmiddlewaretoken" in body


def test_login_with_valid_credentials_lands_on_runs(
    client: Client, user: User, closed_temporal_address: str
) -> None:
    response = client.post(
        "/login/",
        {"username": "ada", "password": "correct horse battery staple", "next": "/"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert "<h1>Runs</h1>" in page.content.decode()


def test_login_with_wrong_password_shows_error(client: Client, user: User) -> None:
    response = client.post("/login/", {"username": "ada", "password": "nope"})
    assert response.status_code == 200
    assert "enter a correct username and password" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_logout_is_post_only_and_ends_the_session(logged_in_client: Client) -> None:
    assert logged_in_client.get("/logout/").status_code == 405
    response = logged_in_client.post("/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert logged_in_client.get("/").status_code == 302
