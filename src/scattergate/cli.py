"""The `scattergate` command. `main(argv) -> int` so tests can call it directly."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from scattergate import __version__
from scattergate.config import Config, ConfigError, load, parse_host_port


def _serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the SMTP gateway",
                       description="Run the SMTP gateway. Flags override the config file.")
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
    p.add_argument("--workers", type=int, metavar="N", help="worker processes sharing the port")
    p.add_argument("--max-message-size", type=int, metavar="BYTES")
    p.add_argument("--max-recipients", type=int, metavar="N")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


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
    }
    if getattr(args, "spool", None):
        overrides[("spool", "enabled")] = True
    if getattr(args, "dns", None):
        host, port = parse_host_port(args.dns, "--dns")
        overrides[("dns", "nameservers")] = [host]
        overrides[("dns", "port")] = port
    for (section, key), value in overrides.items():
        if value is not None:
            setattr(getattr(config, section), key, value)
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scattergate", description="A mail gateway that ends email backscatter.")
    parser.add_argument("--version", action="version", version=f"scattergate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve_parser(sub)
    return parser


def load_config(args: argparse.Namespace) -> Config:
    config = apply_overrides(load(args.config), args)
    config.validate()
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        config = load_config(args)
        if args.command == "serve":
            from scattergate.serve import serve

            return serve(config)
    except ConfigError as exc:
        print(f"scattergate: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"scattergate: {exc}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
