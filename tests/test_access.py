"""The access rules of voicebridge.access, one table per rule, no server."""

from __future__ import annotations

import pytest

from voicebridge.access import (
    admin_ok,
    choose_protocol,
    client_token_ok,
    is_loopback,
    origin_ok,
    token_matches,
)

TOKEN = "tok-123"


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.0.0.5", False),
        ("203.0.113.7", False),
        ("2001:db8::1", False),
        ("localhost", False),
        ("[::1]", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(remote: str | None, expected: bool) -> None:
    """Only a loopback IP address counts; names, bracketed forms and no address do not."""
    assert is_loopback(remote) is expected


@pytest.mark.parametrize(
    ("given", "expected_token", "expected"),
    [
        (TOKEN, TOKEN, True),
        ("tok-124", TOKEN, False),
        ("tok-12", TOKEN, False),
        ("TOK-123", TOKEN, False),
        ("", TOKEN, False),
        ("clé-é", "clé-é", True),
    ],
)
def test_token_matches(given: str, expected_token: str, expected: bool) -> None:
    """A token matches only the identical string, including non-ASCII ones."""
    assert token_matches(given, expected_token) is expected


@pytest.mark.parametrize(
    ("query", "offered", "expected"),
    [
        ("", "", False),
        (TOKEN, "", True),
        ("bad", "", False),
        ("", f"token.{TOKEN}", True),
        ("", f"voicebridge, token.{TOKEN}", True),
        ("", f"voicebridge,token.{TOKEN}", True),
        ("", f"token.{TOKEN}, voicebridge", True),
        ("", "voicebridge, token.bad", False),
        ("", "voicebridge", False),
        ("", "token.", False),
        ("", " , ,", False),
        ("bad", f"token.{TOKEN}", True),
        (TOKEN, "token.bad", True),
        ("", f"token.{TOKEN}x", False),
    ],
)
def test_client_token_ok(query: str, offered: str, expected: bool) -> None:
    """The client token is accepted from ?token= or an offered 'token.X' subprotocol."""
    assert client_token_ok(query, offered, TOKEN) is expected


def test_client_token_empty_never_matches_an_empty_expected_token() -> None:
    """An empty candidate is never a match, even against an empty expected token."""
    assert client_token_ok("", "", "") is False


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ("", ("voicebridge",)),
        ("  ", ("voicebridge",)),
        ("voicebridge", ("voicebridge",)),
        (f"voicebridge, token.{TOKEN}", ("voicebridge",)),
        (f"token.{TOKEN}, voicebridge", ("voicebridge",)),
        (f"token.{TOKEN}", (f"token.{TOKEN}",)),
        ("chat, superchat", ("chat",)),
        (" , chat", ("chat",)),
    ],
)
def test_choose_protocol(offered: str, expected: tuple[str, ...]) -> None:
    """'voicebridge' is selected when offered; otherwise the client's first offer is echoed."""
    assert choose_protocol(offered) == expected


HOST = "voice.example.com"


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, HOST, (), True),
        (f"https://{HOST}", HOST, (), True),
        (f"https://{HOST}/", HOST, (), True),
        (f"http://{HOST}:8000", f"{HOST}:8000", (), True),
        (f"https://{HOST}", "other.example.com", (), False),
        (f"https://{HOST}:8443", HOST, (), False),
        ("https://evil.example", HOST, (), False),
        ("http://localhost:8000", HOST, (), True),
        ("http://127.0.0.1:5173", HOST, (), True),
        ("http://[::1]:8000", HOST, (), True),
        ("http://localhost.evil.example", HOST, (), False),
        ("null", HOST, (), False),
        ("", HOST, (), False),
        ("https://app.example.com", HOST, ("https://app.example.com",), True),
        ("https://app.example.com/", HOST, ("https://app.example.com",), True),
        ("http://app.example.com", HOST, ("https://app.example.com",), False),
        ("http://localhost:8000", HOST, ("https://app.example.com",), False),
        (f"https://{HOST}", HOST, ("https://app.example.com",), False),
        ("https://evil.example", HOST, ("*",), True),
        ("https://evil.example", HOST, ("https://app.example.com", "*"), True),
        (None, HOST, ("https://app.example.com",), True),
    ],
)
def test_origin_ok(origin: str | None, host: str, allowed: tuple[str, ...], expected: bool) -> None:
    """Own origin and loopback pages by default; exactly ALLOWED_ORIGINS (or '*') when set."""
    assert origin_ok(origin, host, allowed) is expected


@pytest.mark.parametrize(
    ("header", "remote", "expected_token", "expected"),
    [
        ("", "127.0.0.1", "", True),
        ("", "::1", "", True),
        ("", "203.0.113.7", "", False),
        ("", None, "", False),
        ("", "unix-socket", "", False),
        ("Bearer anything", "203.0.113.7", "", False),
        ("Bearer adm-1", "203.0.113.7", "adm-1", True),
        ("bearer adm-1", "203.0.113.7", "adm-1", True),
        ("BEARER  adm-1 ", "203.0.113.7", "adm-1", True),
        ("Bearer wrong", "203.0.113.7", "adm-1", False),
        ("Bearer wrong", "127.0.0.1", "adm-1", False),
        ("", "127.0.0.1", "adm-1", False),
        ("Bearer ", "203.0.113.7", "adm-1", False),
        ("Bearer", "203.0.113.7", "adm-1", False),
        ("Basic adm-1", "203.0.113.7", "adm-1", False),
        ("adm-1", "203.0.113.7", "adm-1", False),
    ],
)
def test_admin_ok(header: str, remote: str | None, expected_token: str, expected: bool) -> None:
    """With ADMIN_TOKEN only 'Bearer <token>' passes; without it, only loopback clients."""
    assert admin_ok(header, remote, expected_token) is expected
