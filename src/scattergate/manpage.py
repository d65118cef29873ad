"""scattergate(8), written from the argparse parser the command itself uses, so the manual
lists exactly the commands and flags that exist. `python -m scattergate.manpage > scattergate.8`.

argparse keeps its actions in `_actions` and the sub-commands' help in `_choices_actions`:
read-only use of attributes that every argparse documentation tool relies on.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Iterator

from scattergate import __version__


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # ("quarantine", "release")
    parser: argparse.ArgumentParser
    help: str


def build_parser() -> argparse.ArgumentParser:
    from scattergate.cli import build_parser as cli_parser  # the command's own parser

    return cli_parser()


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[Command]:
    """Every sub-command under `parser`, depth first, in the order `--help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield Command(path + (name,), sub, helps.get(name, ""))
                yield from commands(sub, path + (name,))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, argparse._SubParsersAction) and a.help != argparse.SUPPRESS]


def has_subcommands(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line read as a request."""
    text = " ".join(text.split()).replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _option_heading(action: argparse.Action) -> str:
    metavar = action.metavar if isinstance(action.metavar, str) else None
    value = ""
    if action.nargs != 0:
        value = metavar or (action.dest.upper() if action.option_strings else action.dest)
        if action.choices is not None and metavar is None:
            value = "{" + ",".join(str(c) for c in action.choices) + "}"
        value = f" \\fI{roff(value)}\\fR"
        if action.nargs == "?":
            value = f" [{value.strip()}]"
    if not action.option_strings:
        return f"\\fI{roff(metavar or action.dest)}\\fR"
    return ", ".join(f"\\fB{roff(flag)}\\fR" for flag in action.option_strings) + value


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:  # argparse's own substitutions, e.g. %(default)s
        text = text % {**vars(action), "prog": ""}
    return roff(text)


SIGNALS = [
    ("TERM, INT", "stop accepting connections and drain the sessions in flight (up to 30 s), then exit."),
    ("HUP", "serve: re-read the configuration (new sessions use it, those in flight finish on the "
            "old one) and reopen the log file; the other services: reopen the log file."),
    ("USR1", "reopen the log file (for logrotate)."),
]

FILES = [
    ("/etc/scattergate/scattergate.toml", "the configuration (every key: "
     "/usr/share/doc/scattergate/examples/scattergate.toml)."),
    ("/var/lib/scattergate", "state (SQLite), spool, quarantine, default Maildir (state.data_dir)."),
    ("/var/log/scattergate/scattergate.log", "the log file of the Debian package's configuration (logging.file)."),
]


def _summary(parser: argparse.ArgumentParser) -> str:
    """The NAME line's text: lower-case start, no full stop (man-pages(7))."""
    text = (parser.description or "").rstrip(".")
    return text[:1].lower() + text[1:]


def render(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or build_parser()
    out = [
        f'.TH SCATTERGATE 8 "" "scattergate {roff(__version__)}" "System Administration"',
        ".SH NAME",
        f"scattergate \\- {roff(_summary(parser))}",
        ".SH SYNOPSIS",
        ".B scattergate",
        "[\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        roff("scattergate refuses inside the SMTP dialogue, bounces only to proven senders, and refuses "
             "bounces for mail it never sent. It runs as an SMTP gateway (serve) or beside Postfix "
             "(milter, policy, srs-socketmap). Flags override the configuration file, and only the keys "
             "they name."),
        ".SH COMMANDS",
    ]
    for command in commands(parser):
        if has_subcommands(command.parser):
            continue  # its sub-commands each get their own section
        out.append(f'.SS "scattergate {roff(" ".join(command.path))}"')
        out.append(roff(command.parser.description or command.help or ""))
        for action in options(command.parser):
            if "-h" in action.option_strings:
                continue
            out += [".TP", _option_heading(action), _help(action)]
    out.append(".SH SIGNALS")
    for name, text in SIGNALS:
        out += [".TP", f"\\fB{roff(name)}\\fR", roff(text)]
    out.append(".SH FILES")
    for name, text in FILES:
        out += [".TP", f"\\fI{roff(name)}\\fR", roff(text)]
    out += [
        ".SH EXIT STATUS",
        roff("0 success; 1 the operation failed or a service could not start (port in use); "
             "2 a usage or configuration error, with the key named."),
        ".SH SEE ALSO",
        "\\fBpostfix\\fR(1), \\fBpostconf\\fR(5), \\fBlogrotate\\fR(8), \\fBsystemd.service\\fR(5); "
        + roff("/usr/share/doc/scattergate/ (README.md and docs/)."),
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
