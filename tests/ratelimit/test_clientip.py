"""Client address behind proxies: X-Forwarded-For is believed only as far as our own proxies wrote it."""

from __future__ import annotations

import pytest

from helpline.api.clientip import client_key, parse_networks, rate_key, resolve_client

PROXIES = parse_networks("10.0.0.0/8, 192.168.1.1, fd00::/8")


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", value.encode()) for value in values]


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert resolve_client("203.0.113.7", xff("198.51.100.1"), ()) == "203.0.113.7"


def test_a_spoofed_header_from_an_untrusted_peer_changes_nothing() -> None:
    for spoof in ("198.51.100.1", "10.0.0.1", "1.1.1.1, 2.2.2.2", "garbage"):
        assert resolve_client("203.0.113.7", xff(spoof), PROXIES) == "203.0.113.7"


def test_a_trusted_proxy_names_the_client() -> None:
    assert resolve_client("10.0.0.5", xff("198.51.100.1"), PROXIES) == "198.51.100.1"


def test_the_right_most_untrusted_hop_wins_over_what_the_client_wrote() -> None:
    # client 198.51.100.1 sent "X-Forwarded-For: 6.6.6.6"; two of our proxies appended what they saw.
    headers = xff("6.6.6.6, 198.51.100.1, 10.1.1.1")
    assert resolve_client("192.168.1.1", headers, PROXIES) == "198.51.100.1"


def test_repeated_header_lines_are_read_in_order() -> None:
    assert resolve_client("10.0.0.5", xff("6.6.6.6", "198.51.100.1"), PROXIES) == "198.51.100.1"


def test_only_proxies_in_the_chain_means_the_left_most_one() -> None:
    assert resolve_client("10.0.0.5", xff("10.0.0.9, 10.0.0.8"), PROXIES) == "10.0.0.9"


def test_a_garbled_hop_stops_the_walk_at_the_last_address_a_proxy_vouched_for() -> None:
    assert resolve_client("10.0.0.5", xff("198.51.100.1, not-an-ip, 10.0.0.7"), PROXIES) == "10.0.0.7"


def test_a_trusted_peer_without_the_header_is_itself_the_client() -> None:
    assert resolve_client("10.0.0.5", [], PROXIES) == "10.0.0.5"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("198.51.100.1:4711", "198.51.100.1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("  2001:db8::2  ", "2001:db8::2"),
        ("::ffff:198.51.100.3", "198.51.100.3"),
    ],
)
def test_proxy_address_forms(entry: str, expected: str) -> None:
    assert resolve_client("10.0.0.5", xff(entry), PROXIES) == expected


def test_ipv6_clients_share_a_key_per_64() -> None:
    assert rate_key("2001:db8:1:2:aaaa::1") == rate_key("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert rate_key("2001:db8:1:3::1") != rate_key("2001:db8:1:2::1")
    assert rate_key("198.51.100.1") == "198.51.100.1"


def test_ipv6_proxies_are_trusted_by_network() -> None:
    assert resolve_client("fd00::1", xff("2001:db8:9::5"), PROXIES) == "2001:db8:9::5"


def test_a_unix_socket_peer_is_a_local_proxy() -> None:
    assert resolve_client(None, xff("6.6.6.6, 198.51.100.1"), PROXIES) == "198.51.100.1"
    assert resolve_client(None, xff("198.51.100.1"), ()) == "unknown"  # no proxies configured: nothing is trusted
    assert resolve_client(None, [], PROXIES) == "unknown"


def test_client_key_from_an_asgi_scope() -> None:
    scope = {"type": "http", "client": ("10.2.3.4", 5555), "headers": xff("2001:db8:5:6::9")}
    assert client_key(scope, "10.0.0.0/8") == "2001:db8:5:6::/64"
    assert client_key(scope, "") == "10.2.3.4"
    assert client_key({"type": "http", "client": None, "headers": []}, "") == "unknown"
    # Without proxies the key is the peer's, remembered per peer: the header never counts, first call or later.
    for _ in range(2):
        assert client_key({"type": "http", "client": ("2001:db8:1:2::7", 1), "headers": scope["headers"]}, "") == (
            "2001:db8:1:2::/64"
        )
        assert client_key({"type": "http", "client": ("::ffff:10.2.3.4", 1), "headers": []}, "") == "10.2.3.4"


def test_bad_proxy_list_is_refused() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        parse_networks("10.0.0.0/33")
