"""`scattergate passwd USER`: print a line for smtp_auth.users_file (the password hashed)."""

from __future__ import annotations

import argparse
import getpass
import sys

from scattergate.credentials import hash_password


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "passwd", help="hash a password for SMTP AUTH; print the users-file line",
        description="Read a password (twice, unechoed, on a terminal; else one line of standard input) "
                    "and print 'USER:scrypt$...' to append to smtp_auth.users_file (mode 0600).",
    )
    p.add_argument("user", help="the login name (no ':' and no spaces)")


def run(args: argparse.Namespace) -> int:
    user: str = args.user
    if not user or ":" in user or any(c.isspace() or not c.isprintable() for c in user):
        print("scattergate: the user name must be non-empty, without ':' or spaces", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {user}: ")
        if getpass.getpass("again: ") != password:
            print("scattergate: the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("scattergate: empty password", file=sys.stderr)
        return 2
    print(f"{user}:{hash_password(password)}")
    return 0
