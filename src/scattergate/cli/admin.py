"""What the administration commands (`scattergate quarantine`, `scattergate queue`) share:
which gateway they work on, and asking before something cannot be undone."""

from __future__ import annotations

import argparse
import sys

from scattergate.config import Config, load
from scattergate.config_check import validate


def common_args() -> argparse.ArgumentParser:
    """--config and --data-dir: the gateway whose data the command works on."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="TOML configuration file")
    common.add_argument("--data-dir", metavar="DIR", help="the gateway's data directory (default ./scattergate-data)")
    return common


def config_of(args: argparse.Namespace) -> Config:
    config = load(args.config)
    if args.data_dir is not None:
        config.state.data_dir = args.data_dir
    validate(config)
    return config


def confirm(question: str, yes: bool) -> bool:
    """`yes` (the --yes flag), or the answer typed to `question` (on stderr; anything but
    y/yes, or the end of input, is no)."""
    if yes:
        return True
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = input()
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")
