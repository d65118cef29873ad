"""The `scattergate` command. `main(argv) -> int` so tests can call it directly."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from scattergate import __version__
from scattergate.cli import passwd as passwd_cli
from scattergate.cli import quarantine as quarantine_cli
from scattergate.cli import queue as queue_cli
from scattergate.cli import tools
from scattergate.config import Config, ConfigError, load, parse_host_port
from scattergate.config_check import StartError, preflight, validate


def _serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the SMTP gateway",
                       description="Run the SMTP gateway. Flags override the config file.")
    _serve_args(p)
    p = sub.add_parser("check-config", help="validate the configuration serve would run with, and print it",
                       description="Load the config file and flags exactly as serve does; print the "
                                   "effective configuration as TOML; exit 0 when valid, 2 when not.")
    _serve_args(p)


def _serve_args(p: argparse.ArgumentParser) -> None:
    # Every flag defaults to None: only what the user passed overrides the file.
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:2525)")
    p.add_argument("--hostname", help="our name in the banner and Received headers")
    p.add_argument("--domain", action="append", metavar="DOMAIN", help="a domain we receive for (repeatable)")
    p.add_argument("--recipients", metavar="FILE", help="valid recipient addresses, one per line")
    p.add_argument("--trusted-network", action="append", metavar="CIDR",
                   help="clients allowed to relay to other domains (repeatable; default: none)")
    p.add_argument("--maildir", metavar="DIR", help="deliver locally into Maildirs under DIR")
    p.add_argument("--relay", metavar="HOST:PORT", help="relay accepted mail to this downstream MTA")
    p.add_argument("--spool", action="store_true", default=None,
                   help="store-and-forward: spool accepted mail (fsync) and deliver it to --relay with retries")
    p.add_argument("--dns", metavar="HOST:PORT", help="the DNS resolver to ask (default: /etc/resolv.conf)")
    p.add_argument("--no-verify-recipients", dest="verify_recipients", action="store_false", default=None,
                   help="do not probe the downstream for unknown recipients")
    p.add_argument("--data-dir", metavar="DIR", help="state (SQLite) and logs (default ./scattergate-data)")
    p.add_argument("--workers", type=_workers, metavar="N|auto",
                   help="worker processes sharing the port (default: auto, one per core)")
    p.add_argument("--max-message-size", type=int, metavar="BYTES")
    p.add_argument("--max-recipients", type=int, metavar="N")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    _syslog_arg(p)
    p.add_argument("--clamd", metavar="ADDRESS", help="scan with clamd at unix:/PATH or HOST:PORT (enables it)")
    p.add_argument("--spamd", metavar="ADDRESS", help="scan with SpamAssassin's spamd at HOST:PORT or unix:/PATH")
    p.add_argument("--rspamd", metavar="ADDRESS", help="scan with rspamd's normal worker at HOST:PORT")
    _http_arg(p)


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    overrides = {
        ("server", "listen"): args.listen,
        ("server", "hostname"): args.hostname,
        ("server", "workers"): args.workers,
        ("server", "max_message_size"): args.max_message_size,
        ("server", "max_recipients"): args.max_recipients,
        ("receive", "domains"): args.domain,
        ("receive", "recipients_file"): args.recipients,
        ("receive", "trusted_networks"): args.trusted_network,
        ("delivery", "maildir"): args.maildir,
        ("delivery", "relay"): args.relay,
        ("delivery", "verify_recipients"): args.verify_recipients,
        ("state", "data_dir"): args.data_dir,
        ("logging", "level"): args.log_level,
        ("logging", "syslog"): args.syslog,
        ("http", "listen"): args.http_listen,
    }
    if getattr(args, "spool", None):
        overrides[("spool", "enabled")] = True
    if getattr(args, "dns", None):
        host, port = parse_host_port(args.dns, "--dns")
        overrides[("dns", "nameservers")] = [host]
        overrides[("dns", "port")] = port
    # Scanner flags name an address and switch the scanner on ([scan.*] sub-tables).
    for flag, name in (("clamd", "clamav"), ("spamd", "spamd"), ("rspamd", "rspamd")):
        address = getattr(args, flag, None)
        if address is not None:
            scanner = getattr(config.scan, name)
            scanner.address, scanner.enabled = address, True
    for (section, key), value in overrides.items():
        if value is not None:
            setattr(getattr(config, section), key, value)
    return config


def _postfix_side_args(p: argparse.ArgumentParser, listen_help: str) -> None:
    """Flags shared by the services Postfix talks to (milter, policy)."""
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--listen", metavar="inet:HOST:PORT|unix:PATH", help=listen_help)
    p.add_argument("--hostname", help="our name in Authentication-Results headers and logs")
    p.add_argument("--domain", action="append", metavar="DOMAIN", help="a domain we receive for (repeatable)")
    p.add_argument("--recipients", metavar="FILE", help="valid recipient addresses, one per line")
    p.add_argument("--trusted-network", action="append", metavar="CIDR",
                   help="clients allowed to relay to other domains (repeatable; default: none)")
    p.add_argument("--data-dir", metavar="DIR", help="state (SQLite) and logs (default ./scattergate-data)")
    p.add_argument("--socket-mode", type=lambda text: int(text, 8), metavar="OCTAL",
                   help="mode of a unix listening socket (default 660)")
    p.add_argument("--socket-group", metavar="GROUP", help="group of a unix listening socket (e.g. postfix)")
    p.add_argument("--dns", metavar="HOST:PORT", help="the DNS resolver to ask (default: /etc/resolv.conf)")
    p.add_argument("--secret-file", metavar="FILE",
                   help="the site secret shared by every service of the site (default DATA_DIR/site.key)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    _syslog_arg(p)


def _syslog_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--syslog", nargs="?", const="/dev/log", metavar="ADDRESS",
                   help="also log to syslog: /dev/log (the default), a unix socket path or HOST:PORT (UDP)")


def _workers(text: str) -> int | str:
    """--workers: a positive number, or "auto" (one per core)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _http_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http-listen", metavar="HOST:PORT",
                   help="metrics and dashboard (default 127.0.0.1:8025; '' disables)")


def _postfix_side_overrides(config: Config, args: argparse.Namespace) -> Config:
    listen_key = {"milter": "milter_listen", "policy": "policy_listen", "srs-socketmap": "socketmap_listen"}
    overrides = {
        ("server", "hostname"): getattr(args, "hostname", None),
        ("receive", "domains"): getattr(args, "domain", None),
        ("receive", "recipients_file"): getattr(args, "recipients", None),
        ("receive", "trusted_networks"): getattr(args, "trusted_network", None),
        ("state", "data_dir"): getattr(args, "data_dir", None),
        ("logging", "level"): getattr(args, "log_level", None),
        ("logging", "syslog"): getattr(args, "syslog", None),
        ("postfix", listen_key[args.command]): args.listen,
        ("postfix", "socket_mode"): getattr(args, "socket_mode", None),
        ("postfix", "socket_group"): getattr(args, "socket_group", None),
        ("backscatter", "secret_file"): getattr(args, "secret_file", None),
        ("postfix", "never_bounce"): getattr(args, "never_bounce", None),
        ("postfix", "policy_budget"): getattr(args, "budget", None),
        ("postfix", "policy_timeout_action"): getattr(args, "timeout_action", None),
        ("postfix", "srs_domain"): getattr(args, "srs_domain", None),
        ("postfix", "srs_secrets_file"): getattr(args, "secrets", None),
        ("http", "listen"): getattr(args, "http_listen", None),
    }
    if getattr(args, "dns", None):
        host, port = parse_host_port(args.dns, "--dns")
        overrides[("dns", "nameservers")] = [host]
        overrides[("dns", "port")] = port
    for (section, key), value in overrides.items():
        if value is not None:
            setattr(getattr(config, section), key, value)
    return config


def _milter_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("milter", help="run the checks as a Postfix/Sendmail milter",
                       description="Serve the milter protocol: Postfix asks, scattergate decides, Postfix delivers.")
    _postfix_side_args(p, "milter socket (default inet:127.0.0.1:8895)")
    _http_arg(p)
    p.add_argument("--no-never-bounce", dest="never_bounce", action="store_false", default=None,
                   help="do not re-add recipients of unverified senders with NOTIFY=NEVER")
    p.set_defaults(overrides=_postfix_side_overrides)


def _policy_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("policy", help="run the envelope checks as a Postfix policy service",
                       description="Serve Postfix's policy delegation protocol (check_policy_service).")
    _postfix_side_args(p, "policy socket (default inet:127.0.0.1:10041)")
    _http_arg(p)
    p.add_argument("--budget", type=float, metavar="SECONDS", help="answer within this time (default 5)")
    p.add_argument("--timeout-action", choices=["dunno", "defer_if_permit"],
                   help="the answer when the budget runs out (default dunno)")
    p.set_defaults(overrides=_postfix_side_overrides)


def _socketmap_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("socketmap", aliases=["srs-socketmap"],
                       help="serve BATV and SRS address rewriting as a Postfix socketmap",
                       description="Maps 'batv' (strip a valid BATV tag), and with --srs-domain the "
                                   "postsrsd-compatible 'forward' and 'reverse'.")
    p.set_defaults(command="srs-socketmap")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--listen", metavar="inet:HOST:PORT|unix:PATH", help="default inet:127.0.0.1:10044")
    p.add_argument("--srs-domain", metavar="DOMAIN", help="the domain of rewritten senders")
    p.add_argument("--secrets", metavar="FILE", help="SRS secrets, one per line, the first signs")
    p.add_argument("--domain", action="append", metavar="DOMAIN", help="local domains: never rewritten")
    p.add_argument("--data-dir", metavar="DIR", help="where the site secret is when --secret-file is not given")
    p.add_argument("--secret-file", metavar="FILE", help="the site secret (BATV), shared with milter and policy")
    p.add_argument("--socket-mode", type=lambda text: int(text, 8), metavar="OCTAL")
    p.add_argument("--socket-group", metavar="GROUP")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    _syslog_arg(p)
    p.set_defaults(overrides=_postfix_side_overrides)


def _check_postfix_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("check-postfix", help="name the Postfix settings that make it a backscatter source",
                       description="Read `postconf -n` and name every setting that makes this Postfix "
                                   "send backscatter, with the fix. Exit 0 safe, 1 risks found, 2 could not run.")
    p.add_argument("-c", "--config-dir", metavar="DIR", help="Postfix configuration directory (postconf -c)")
    p.add_argument("--postconf-output", metavar="FILE",
                   help="read saved `postconf -n` output instead of running postconf")


def _audit_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help="probe a server: does it accept unknown recipients and bounce later?",
                       description="Probe HOST:PORT the way blocklist operators do (docs/audit.md). "
                                   "Exit 0 safe, 1 a backscatter risk found, 2 could not complete.")
    p.add_argument("server", metavar="HOST:PORT", help="the server to audit (the only one we connect to)")
    p.add_argument("--domain", required=True, help="a domain the server receives mail for")
    p.add_argument("--bounce-sender", metavar="ADDRESS",
                   help="an address whose mail reaches --listen-bounce (enables the after-queue test "
                        "and the wait for bounces)")
    p.add_argument("--listen-bounce", metavar="HOST:PORT", default="127.0.0.1:2526",
                   help="where the audit listens for the bounce (default 127.0.0.1:2526)")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for a bounce (default 60)")
    p.add_argument("--sender", metavar="ADDRESS", help="MAIL FROM of the RCPT probes (default: --bounce-sender)")
    p.add_argument("--helo", metavar="NAME", help="our EHLO name (default: this host's fully qualified name)")
    p.add_argument("--recipient", metavar="ADDRESS",
                   help="an existing address for the after-queue test (default: postmaster@DOMAIN)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="new attempts after a temporary refusal (default 2)")
    p.add_argument("--retry-delay", type=float, default=20.0, metavar="SECONDS",
                   help="wait before the first new attempt, doubled for each next one (default 20)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="for the connection and each SMTP reply (default 30)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scattergate", description="A mail gateway that ends email backscatter.")
    parser.add_argument("--version", action="version", version=f"scattergate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve_parser(sub)
    _milter_parser(sub)
    _policy_parser(sub)
    _socketmap_parser(sub)
    _check_postfix_parser(sub)
    _audit_parser(sub)
    tools.register(sub)
    quarantine_cli.register(sub)
    queue_cli.register(sub)
    passwd_cli.register(sub)
    return parser


def load_config(args: argparse.Namespace, *, probe_listen: bool = True) -> Config:
    """The configuration `args` name, validated, and everything it names opened (config_check):
    a problem is a ConfigError naming the setting, before anything starts."""
    overrides = getattr(args, "overrides", apply_overrides)
    config = overrides(load(args.config), args)
    validate(config)
    for warning in preflight(config, args.command, probe_listen=probe_listen):
        print(f"scattergate: warning: {warning}", file=sys.stderr)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in tools.COMMANDS:
        return tools.run(args)
    if args.command == "quarantine":
        return quarantine_cli.run(args)
    if args.command == "queue":
        return queue_cli.run(args)
    if args.command == "passwd":
        return passwd_cli.run(args)
    if args.command == "audit":
        from scattergate.audit.run import main as audit

        return audit(args)
    if args.command == "check-postfix":
        from scattergate.cli.check_postfix import main as check_postfix

        return check_postfix(args.config_dir, args.postconf_output)
    try:
        config = load_config(args)
        if args.command == "serve":
            from scattergate.serve import serve

            # A reload must not probe the addresses the running gateway holds.
            return serve(config, reload=lambda: load_config(args, probe_listen=False))
        if args.command == "check-config":
            from scattergate.config import to_toml

            print(to_toml(config), end="")
            return 0
        if args.command == "milter":
            from scattergate.frontends import milter

            return milter.run(config)
        if args.command == "policy":
            from scattergate.frontends import policy

            return policy.run(config)
        if args.command == "srs-socketmap":
            from scattergate.frontends import socketmap

            return socketmap.run(config)
    except ConfigError as exc:
        print(f"scattergate: configuration error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"scattergate: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"scattergate: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
