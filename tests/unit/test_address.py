import pytest

from scattergate.address import Address, AddressError, parse_path


@pytest.mark.parametrize(
    "text, local, domain",
    [
        ("<user@example.org>", "user", "example.org"),
        ("user@example.org", "user", "example.org"),
        ("<first.last+tag@sub.example.org>", "first.last+tag", "sub.example.org"),
        ('<"john doe"@example.org>', '"john doe"', "example.org"),
        ("<user@[192.0.2.1]>", "user", "[192.0.2.1]"),
        ("<user@[IPv6:2001:db8::1]>", "user", "[IPv6:2001:db8::1]"),
        ("<jörg@bücher.example>", "jörg", "bücher.example"),
    ],
)
def test_valid_paths(text: str, local: str, domain: str) -> None:
    address = parse_path(text)
    assert (address.local, address.domain) == (local, domain)


@pytest.mark.parametrize(
    "text",
    [
        "<>", "<user>", "<@example.org>", "<user@>", "<user@example.org", "<us er@example.org>",
        "<user@example..org>", "<user@-example.org>", "<user@example.org.>", "<.user@example.org>",
        "<user.@example.org>", "<user@[300.1.1.1]>", "<user@[IPv6:zz::1]>", '<"unterminated@example.org>',
        "<" + "a" * 65 + "@example.org>", "<user@" + "a." * 130 + "org>", "<@a.example:>",
        "<@:user@example.org>",
    ],
)
def test_invalid_paths(text: str) -> None:
    with pytest.raises(AddressError):
        parse_path(text)


def test_null_path_only_where_allowed() -> None:
    assert parse_path("<>", allow_null=True).is_null
    assert parse_path("<>", allow_null=True) == Address.null()
    with pytest.raises(AddressError):
        parse_path("<>")


def test_source_route_is_kept_visible() -> None:
    address = parse_path("<@relay1.example,@relay2.example:user@example.org>")
    assert address.route == ("relay1.example", "relay2.example")
    assert address.has_routing
    assert str(address) == "user@example.org"


@pytest.mark.parametrize(
    "text", ["<user%victim.example@example.org>", "<victim.example!user@example.org>", '<"user@victim.example"@example.org>']
)
def test_relay_tricks_are_routing(text: str) -> None:
    assert parse_path(text).has_routing


def test_quoted_local_part_unquoting_and_normalisation() -> None:
    address = parse_path('<"a\\"b"@Example.ORG>')
    assert address.is_quoted and address.unquoted_local == 'a"b'
    assert parse_path("<User@Example.ORG>").normalized == "user@example.org"
    assert not parse_path("<user@example.org>").has_routing


def test_a_path_parsed_again_is_the_same_address_and_a_bad_one_fails_every_time() -> None:
    from scattergate.address import AddressError, parse_path

    first = parse_path("<User@Example.ORG>")
    assert parse_path("<User@Example.ORG>") == first == parse_path("User@Example.ORG")
    assert (first.local, first.domain) == ("User", "Example.ORG")
    assert parse_path("<>", allow_null=True).is_null
    for _ in range(2):
        with pytest.raises(AddressError):
            parse_path("<>")
        with pytest.raises(AddressError):
            parse_path("<a@b")
