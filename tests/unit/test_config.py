from pathlib import Path

import pytest

from scattergate.cli import build_parser, load_config
from scattergate.config import Config, ConfigError, from_dict, load, parse_host_port
from scattergate.config_check import validate


def test_defaults_are_a_safe_local_gateway() -> None:
    config = Config()
    validate(config)
    assert config.server.listen == "127.0.0.1:2525"
    assert config.receive.trusted_networks == []  # relays for nobody, loopback included
    assert config.maildir == Path("scattergate-data/maildir")
    assert config.dnsbl.zones == []  # no third-party lookups unless the admin asks


def test_unknown_key_is_an_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"server\.listen_port"):
        from_dict({"server": {"listen_port": 25}})
    with pytest.raises(ConfigError, match=r"unknown configuration key: bogus"):
        from_dict({"bogus": {}})


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"server": {"workers": "2"}}, "server.workers"),
        ({"server": {"data_deadline": True}}, "server.data_deadline"),
        ({"receive": {"domains": "example.org"}}, "receive.domains"),
        ({"delivery": {"verify_recipients": 1}}, "delivery.verify_recipients"),
    ],
)
def test_wrong_types_are_errors_naming_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(raw)


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: setattr(c.server, "listen", "nonsense"), "server.listen"),
        (lambda c: setattr(c.delivery, "relay", "host"), "delivery.relay"),
        (lambda c: setattr(c.receive, "trusted_networks", ["10.0.0.0/33"]), "trusted_networks"),
        (lambda c: setattr(c.server, "data_deadline", 900.0), "data_deadline"),
        (lambda c: setattr(c.server, "max_recipients", 0), "max_recipients"),
        (lambda c: setattr(c.dnsbl, "mode", "strict"), "dnsbl.mode"),
        (lambda c: setattr(c.dnsbl, "zones", ["ips backscatterer"]), "dnsbl.zones"),
        (lambda c: setattr(c.dnsbl, "budget", 0.0), "dnsbl.budget"),
    ],
)
def test_invalid_values_are_errors(mutate, key: str) -> None:  # type: ignore[no-untyped-def]
    config = Config()
    mutate(config)
    with pytest.raises(ConfigError, match=key):
        validate(config)


def test_toml_file_and_cli_overrides(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[server]\nlisten = "127.0.0.1:2526"\nmax_recipients = 10\n'
        '[receive]\ndomains = ["example.org"]\n'
    )
    args = build_parser().parse_args(["serve", "--config", str(path), "--listen", "127.0.0.1:2999"])
    config = load_config(args)
    assert config.server.listen == "127.0.0.1:2999"  # the flag wins
    assert config.server.max_recipients == 10  # the file stays where no flag was given
    assert config.receive.domains == ["example.org"]


def test_unreadable_or_broken_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="broken.toml"):
        load(broken)


def test_host_port_parsing() -> None:
    assert parse_host_port("[::1]:25") == ("::1", 25)
    assert parse_host_port("mx.example:2525") == ("mx.example", 2525)
    for bad in ("", ":25", "host:", "host:99999", "host:port"):
        with pytest.raises(ConfigError):
            parse_host_port(bad)


def test_workers_default_to_one_per_core_and_take_auto_or_a_number() -> None:
    # Issue 16.4: out of the box, one worker per core (as nginx's worker_processes auto).
    import os

    cores = len(os.sched_getaffinity(0))
    assert Config().server.workers == "auto" and Config().server.process_count() == cores
    assert from_dict({"server": {"workers": "auto"}}).server.process_count() == cores
    assert from_dict({"server": {"workers": 3}}).server.process_count() == 3
    for wrong in ("three", True, 2.5):
        with pytest.raises(ConfigError, match=r"server\.workers"):
            from_dict({"server": {"workers": wrong}})
    config = from_dict({"server": {"workers": 0}})
    with pytest.raises(ConfigError, match=r"server\.workers must be positive"):
        validate(config)


def test_the_workers_flag_takes_auto_or_a_number(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[server]\nworkers = 1\n")
    assert load_config(build_parser().parse_args(["serve", "--config", str(path)])).server.workers == 1
    assert load_config(build_parser().parse_args(["serve", "--config", str(path), "--workers", "auto"])).server.workers == "auto"
    assert load_config(build_parser().parse_args(["serve", "--workers", "4"])).server.workers == 4
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", "many"])


@pytest.mark.parametrize("command", ["milter", "policy"])
def test_postfix_side_flags_dns_secret_and_socket_group(command: str, tmp_path: Path) -> None:
    # The secret's directory must exist: load_config opens what the configuration names.
    secret = tmp_path / "site.key"
    args = build_parser().parse_args([command, "--dns", "127.0.0.1:5353", "--secret-file", str(secret),
                                      "--socket-group", "postfix"])
    config = load_config(args)
    assert (config.dns.nameservers, config.dns.port) == (["127.0.0.1"], 5353)
    assert config.site_secret_file == secret
    assert config.postfix.socket_group == "postfix"


@pytest.mark.parametrize("name", ["socketmap", "srs-socketmap"])
def test_socketmap_command_has_two_names(name: str) -> None:
    args = build_parser().parse_args([name, "--listen", "inet:127.0.0.1:1", "--secret-file", "/k"])
    config = load_config(args)
    assert (config.postfix.socketmap_listen, str(config.site_secret_file)) == ("inet:127.0.0.1:1", "/k")
