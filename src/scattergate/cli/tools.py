"""Scriptable tools: `scattergate classify`, `batv`, `srs`, and the `simulate` showcase.

Each prints plain results on stdout and answers with its exit code (0 ok / valid, 1 invalid or
expired, 2 usage or input error), so they can be used from shell scripts and tests.
`--now EPOCH` makes BATV and SRS results reproducible.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from scattergate.rewrite import batv, srs
from scattergate.rewrite.keys import SecretFileError, load_batv_keyring, load_srs_secrets

COMMANDS = ("classify", "batv", "srs", "simulate")

# The names the issue and scripts use for the classifier's kinds.
_KIND_NAMES = {"auto_reply": "autoreply"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("classify", help="say what each message is: dsn, bounce, autoreply, challenge, feedback, none")
    p.add_argument("files", nargs="+", metavar="FILE", help="message files ('-' for standard input)")
    p.add_argument("--json", action="store_true", help="one JSON object per line per message")
    p.add_argument("--sender", default=None, help="the envelope sender ('' for the null sender)")

    p = sub.add_parser("simulate", help="the showcase: replay a traffic mix on loopback, compare with a naive server")
    p.add_argument("--rounds", type=int, default=5, help="times the mix is replayed (default 5)")

    p = sub.add_parser("batv", help="sign or verify BATV (prvs) addresses, Exim-compatible")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (("sign", "print the tagged address"), ("verify", "print the bare address; exit 1 when invalid")):
        a = actions.add_parser(name, help=help_text)
        a.add_argument("address")
        a.add_argument("--secret-file", required=True, metavar="F", help="'K:secret' lines, mode 0600")
        a.add_argument("--now", type=float, metavar="EPOCH", help="the time to sign or verify at")
        if name == "sign":
            a.add_argument("--key", metavar="K", help="key digit to sign with (default: the file's first)")

    p = sub.add_parser("srs", help="SRS forward or reverse, postsrsd-compatible")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("forward", help="print the SRS address for forwarding")
    a.add_argument("address")
    a.add_argument("--alias-domain", required=True, metavar="D")
    a.add_argument("--secret-file", required=True, metavar="F", help="one secret per line (the first signs), mode 0600")
    a.add_argument("--now", type=float, metavar="EPOCH")
    a = actions.add_parser("reverse", help="print the original address; exit 1 when invalid or expired")
    a.add_argument("address")
    a.add_argument("--secret-file", required=True, metavar="F")
    a.add_argument("--now", type=float, metavar="EPOCH")


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "classify":
            return _classify(args)
        if args.command == "batv":
            return _batv(args)
        return _srs(args)
    except SecretFileError as exc:
        print(f"scattergate: {exc}", file=sys.stderr)
        return 2


def _classify(args: argparse.Namespace) -> int:
    from scattergate.bounce.classify import classify

    status = 0
    for name in args.files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else open(name, "rb").read()
        except OSError as exc:
            print(f"scattergate: {name}: {exc.strerror}", file=sys.stderr)
            status = 2
            continue
        result = classify(data, args.sender)
        kind = _KIND_NAMES.get(result.kind.value, result.kind.value)
        if args.json:
            print(json.dumps({
                "file": name,
                "kind": kind,
                "confidence": round(result.confidence, 3),
                "original_message_id": result.original_message_id,
                "original_sender": result.original_sender,
                "original_from": result.original_from,
                "failed_recipients": list(result.failed_recipients),
                "status_codes": list(result.status_codes),
                "evidence": list(result.evidence),
            }))
        else:
            recipients = ",".join(result.failed_recipients) or "-"
            print(f"{name}\t{kind}\t{result.confidence:.2f}\t{result.original_message_id or '-'}\t{recipients}")
    return status


def _simulate(args: argparse.Namespace) -> int:
    import asyncio

    from scattergate.simulate.run import simulate, table

    if not 1 <= args.rounds <= 100:  # a bounded load
        print("scattergate: --rounds must be between 1 and 100", file=sys.stderr)
        return 2
    import logging

    logging.getLogger("scattergate").setLevel(logging.ERROR)  # the table says it all
    started = time.monotonic()
    sg, naive = asyncio.run(simulate(args.rounds, progress=lambda text: print(text, file=sys.stderr)))
    print(f"\nscattergate simulate: {args.rounds} rounds of the traffic mix, {time.monotonic() - started:.1f} s\n")
    print(table(sg, naive))
    return 0


def _today(now: float | None) -> int:
    return batv.days_since_epoch(time.time() if now is None else now)


def _batv(args: argparse.Namespace) -> int:
    keyring = load_batv_keyring(args.secret_file)
    if args.action == "sign":
        if args.key is not None:
            if keyring.get(args.key) is None:
                print(f"scattergate: no key {args.key} in {args.secret_file}", file=sys.stderr)
                return 2
            keyring = type(keyring)(keyring.keys, args.key)
        print(batv.sign(args.address, keyring, _today(args.now)))
        return 0
    result = batv.verify(args.address, keyring, _today(args.now))
    if result.valid:
        print(result.address)
        return 0
    print(f"{result.address}\t{result.status.value}", file=sys.stderr)
    return 1


def _srs(args: argparse.Namespace) -> int:
    secrets = load_srs_secrets(args.secret_file)
    today = _today(args.now)
    if args.action == "forward":
        result = srs.forward(args.address, args.alias_domain, secrets, today)
    else:
        result = srs.reverse(args.address, secrets, today)
    if result.ok:
        print(result.address)
        return 0
    print(f"scattergate: {result.message}", file=sys.stderr)
    return 1
