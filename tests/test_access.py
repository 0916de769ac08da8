"""The access rules of voicebridge.access, one table per rule, no server."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from voicebridge.access import (
    admin_ok,
    choose_protocol,
    client_key,
    client_token_ok,
    find_client_token,
    forwarded_client,
    host_ok,
    is_loopback,
    is_loopback_host,
    loggable,
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
        ("\udcff", TOKEN, False),
        ("tok-12\udcff", TOKEN, False),
        ("\ud800", TOKEN, False),
    ],
)
def test_token_matches(given: str, expected_token: str, expected: bool) -> None:
    """A token matches only the identical string; undecodable header bytes never raise."""
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
        ("\udcff", "token.\udcff", False),
    ],
)
def test_client_token_ok(query: str, offered: str, expected: bool) -> None:
    """The client token is accepted from ?token= or an offered 'token.X' subprotocol."""
    assert client_token_ok(query, offered, TOKEN) is expected


def test_client_token_empty_never_matches_an_empty_expected_token() -> None:
    """An empty candidate is never a match, even against an empty expected token."""
    assert client_token_ok("", "", "") is False


def test_find_client_token_names_the_token_presented() -> None:
    """With several tokens, the one the client presents is returned; none is None."""
    tokens = ("tok-a", "tok-b")
    assert find_client_token("tok-b", "", tokens) == "tok-b"
    assert find_client_token("", "voicebridge, token.tok-a", tokens) == "tok-a"
    assert find_client_token("tok-c", "token.", tokens) is None
    assert find_client_token("", "", ()) is None


@pytest.mark.parametrize(
    ("offered", "tokens", "expected"),
    [
        ("", (TOKEN,), ("voicebridge",)),
        ("  ", (), ("voicebridge",)),
        ("voicebridge", (), ("voicebridge",)),
        (f"voicebridge, token.{TOKEN}", (TOKEN,), ("voicebridge",)),
        (f"token.{TOKEN}, voicebridge", (TOKEN,), ("voicebridge",)),
        (f"token.{TOKEN}", (TOKEN,), (f"token.{TOKEN}",)),
        (f"chat, token.{TOKEN}", (TOKEN,), (f"token.{TOKEN}",)),
        (f"token.{TOKEN}", (), ()),
        ("token.bad", (TOKEN,), ()),
        ("token.\udcff", (TOKEN,), ()),
        ("chat, superchat", (TOKEN,), ()),
        (" , chat", (), ()),
    ],
)
def test_choose_protocol(offered: str, tokens: tuple[str, ...], expected: tuple[str, ...]) -> None:
    """'voicebridge' when offered, else a valid offered token.<TOKEN>; nothing else echoed."""
    assert choose_protocol(offered, tokens) == expected


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
        (f"https://{HOST}", HOST, ("https://app.example.com",), True),
        (f"https://{HOST}", f"{HOST.upper()}", ("https://app.example.com",), True),
        (f"ftp://{HOST}", HOST, ("https://app.example.com",), False),
        ("http://[::1", HOST, (), False),
        ("https://\udcff", HOST, (), False),
        ("https://evil.example", HOST, ("*",), True),
        ("https://evil.example", HOST, ("https://app.example.com", "*"), True),
        (None, HOST, ("https://app.example.com",), True),
    ],
)
def test_origin_ok(origin: str | None, host: str, allowed: tuple[str, ...], expected: bool) -> None:
    """Own origin always; loopback pages while ALLOWED_ORIGINS is empty; its entries (or *)."""
    assert origin_ok(origin, host, allowed) is expected


@pytest.mark.parametrize(
    ("header", "remote", "expected_token", "expected"),
    [
        ("", "127.0.0.1", "", True),
        ("", "::1", "", True),
        ("", "203.0.113.7", "", False),
        ("", None, "", False),
        ("", "unix-socket", "", False),
        ("Bearer \udcff", "203.0.113.7", "adm-1", False),
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
    assert admin_ok(header, remote, "localhost:8000", expected_token) is expected


@pytest.mark.parametrize(
    ("host", "expected_token", "expected"),
    [
        ("localhost:8000", "", True),
        ("127.0.0.1", "", True),
        ("[::1]:8000", "", True),
        ("voice.example.com", "", False),
        ("rebind.attacker.example:8000", "", False),
        (None, "", False),
        ("voice.example.com", "adm-1", True),
    ],
)
def test_admin_without_token_needs_a_loopback_host(
    host: str | None, expected_token: str, expected: bool
) -> None:
    """A loopback peer naming a public Host (a proxy, a rebound page) is not an admin."""
    header = "Bearer adm-1" if expected_token else ""
    assert admin_ok(header, "127.0.0.1", host, expected_token) is expected


ALLOWED = frozenset({"localhost", "127.0.0.1", "::1", "voice.example.com"})


@pytest.mark.parametrize(
    ("host", "allowed", "expected"),
    [
        ("localhost", ALLOWED, True),
        ("localhost:8000", ALLOWED, True),
        ("LOCALHOST.:8000", ALLOWED, True),
        ("127.0.0.1:8000", ALLOWED, True),
        ("[::1]:8000", ALLOWED, True),
        ("voice.example.com", ALLOWED, True),
        ("voice.example.com:443", ALLOWED, True),
        ("rebind.attacker.example", ALLOWED, False),
        ("voice.example.com.attacker.example", ALLOWED, False),
        ("127.0.0.2", ALLOWED, False),
        ("localhost:80:80", ALLOWED, False),
        ("[::1", ALLOWED, False),
        ("local\udcffhost", ALLOWED, False),
        ("", ALLOWED, False),
        (None, ALLOWED, False),
        ("anything.example", frozenset({"*"}), True),
        (None, frozenset({"*"}), True),
    ],
)
def test_host_ok(host: str | None, allowed: frozenset[str], expected: bool) -> None:
    """Only a Host naming an allowed name passes (any port); '*' allows every Host."""
    assert host_ok(host, allowed) is expected


def test_is_loopback_host() -> None:
    """Loopback names with or without a port count; other names and none do not."""
    assert is_loopback_host("localhost:8000") and is_loopback_host("[::1]")
    assert not is_loopback_host("voice.example.com") and not is_loopback_host(None)


def test_client_key_is_the_token_only_when_each_client_has_one() -> None:
    """Several tokens: a client is its token; one shared token or none: its address."""
    assert client_key("tok-b", "10.0.0.1", ("tok-a", "tok-b")) == "token#2"
    assert client_key("tok-a", "10.0.0.1", ("tok-a",)) == "address 10.0.0.1"
    assert client_key(None, None, ()) == "address unknown"
    assert "tok-b" not in client_key("tok-b", "10.0.0.1", ("tok-a", "tok-b"))


def test_loggable_escapes_what_a_client_sent() -> None:
    """Header values are shortened and escaped so one value is one log line."""
    assert loggable("https://ok.example") == "https://ok.example"
    assert loggable("a\nb\udcff") == "a\\nb\\udcff"
    assert loggable("x" * 500) == "x" * 120
    assert loggable(None) is None


_PROXIES = (ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8"))


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        # The peer is a trusted proxy: the rightmost address that is not one is the client.
        ("127.0.0.1", ["203.0.113.9"], "203.0.113.9"),
        ("127.0.0.1", ["203.0.113.9, 10.1.2.3"], "203.0.113.9"),
        ("127.0.0.1", ["198.51.100.1, 203.0.113.9"], "203.0.113.9"),  # left: the client's own
        ("127.0.0.1", ["198.51.100.1", "203.0.113.9"], "203.0.113.9"),  # two headers
        ("127.0.0.1", ["2001:db8::1"], "2001:db8::1"),
        # Nothing usable: the peer's own address stands.
        ("127.0.0.1", [], None),
        ("127.0.0.1", ["10.0.0.5"], None),  # only proxies
        ("127.0.0.1", ["not-an-ip"], None),
        ("127.0.0.1", ["203.0.113.9, garbage"], None),
        # An untrusted peer's header is not believed.
        ("198.51.100.7", ["203.0.113.9"], None),
        (None, ["203.0.113.9"], None),
    ],
)
def test_forwarded_client(remote: str | None, forwarded: list[str], expected: str | None) -> None:
    assert forwarded_client(remote, forwarded, _PROXIES) == expected


def test_forwarded_headers_are_ignored_without_trusted_proxies() -> None:
    assert forwarded_client("127.0.0.1", ["203.0.113.9"], ()) is None
