"""The operator page's access rules: loopback-only without auth, credentials, CSRF tokens."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from osteoflag.config import WebSettings, parse_settings
from osteoflag.errors import ConfigError
from osteoflag.settings_fields import is_loopback
from osteoflag.web.security import Csrf, authorised, user_name

TOKEN = "a-token-of-sixteen-chars"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("pacs-gateway.example", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_public_host_without_auth_is_a_config_error_naming_web_host(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"web\.host '0\.0\.0\.0' is not a loopback address"):
        parse_settings({"web": {"host": "0.0.0.0"}}, tmp_path)


@pytest.mark.parametrize(
    "auth", [{"token": TOKEN}, {"username": "radiology", "password": "long enough"}]
)
def test_public_host_with_auth_is_accepted(tmp_path: Path, auth: dict[str, str]) -> None:
    settings = parse_settings({"web": {"host": "0.0.0.0", **auth}}, tmp_path)
    assert settings.web.protected


def test_disabled_page_may_name_any_host(tmp_path: Path) -> None:
    assert not parse_settings({"web": {"host": "0.0.0.0", "enabled": False}}, tmp_path).web.enabled


@pytest.mark.parametrize(
    ("web", "key"),
    [
        ({"username": "radiology"}, "web.username and web.password"),
        ({"token": "short"}, "web.token"),
        ({"port": 70000}, "web.port"),
        ({"bogus": 1}, "web.bogus"),
    ],
)
def test_bad_web_sections_name_the_key(tmp_path: Path, web: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_settings({"web": web}, tmp_path)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials() -> None:
    open_page = WebSettings()
    assert authorised(open_page, None)
    token = WebSettings(token=TOKEN)
    assert authorised(token, f"Bearer {TOKEN}")
    assert authorised(token, _basic("anyone", TOKEN))
    assert not authorised(token, None)
    assert not authorised(token, "Bearer wrong")
    assert not authorised(token, f"Digest {TOKEN}")
    users = WebSettings(username="radiology", password="long enough")
    assert authorised(users, _basic("radiology", "long enough"))
    assert not authorised(users, _basic("radiology", "wrong password"))
    assert not authorised(users, _basic("someone", "long enough"))
    assert not authorised(users, "Basic not-base64!")
    assert not authorised(users, "Basic caf\u00e9")  # not ASCII: refused, not an error
    assert not authorised(users, f"Bearer {TOKEN}")


def test_a_token_names_nobody_whatever_user_came_with_it() -> None:
    both = WebSettings(token=TOKEN, username="radiology", password="long enough")
    assert user_name(both, _basic("dr.smith", TOKEN)) == "token"
    assert user_name(both, _basic("radiology", TOKEN)) == "token"
    assert user_name(both, f"Bearer {TOKEN}") == "token"
    assert user_name(both, _basic("radiology", "long enough")) == "radiology"
    assert user_name(both, _basic("radiology", "wrong password")) is None
    assert user_name(WebSettings(), None) is None


def test_csrf_tokens_are_bound_to_cookie_and_process() -> None:
    csrf = Csrf()
    assert csrf.token_for("cookie-a") == csrf.token_for("cookie-a")
    assert csrf.token_for("cookie-a") != csrf.token_for("cookie-b")
    assert Csrf().token_for("cookie-a") != csrf.token_for("cookie-a")
