"""`scattergate quarantine list|show|release|delete`: the quarantine from a shell.

Exit codes: 0 done, 1 the operation failed (unknown id, downstream refused, delete not
confirmed), 2 usage or configuration error. The work is done by web/quarantine_ops.py, which
the dashboard shares.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time

from scattergate.cli.admin import common_args, config_of, confirm
from scattergate.config import ConfigError
from scattergate.state.store import QuarantineItem


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("quarantine", help="list, show, release or delete quarantined messages",
                       description="Work on the quarantine of a gateway (its --data-dir or --config).")
    common = common_args()
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", parents=[common], help="the held messages, newest first")
    a.add_argument("--search", default="", metavar="TEXT", help="only those whose id, sender, recipients or reason contain TEXT")
    a.add_argument("--limit", type=int, default=100, metavar="N")
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a = actions.add_parser("show", parents=[common], help="print a held message")
    a.add_argument("id")
    a.add_argument("--headers-only", action="store_true", help="only its header section")
    a = actions.add_parser("release", parents=[common],
                           help="deliver a held message without checking it again (to the downstream with "
                                "NOTIFY=NEVER, or into the local Maildir), then drop it from the quarantine")
    a.add_argument("id")
    a.add_argument("--to", metavar="HOST:PORT",
                   help="the downstream MTA (default: delivery.relay; without one, the local Maildir)")
    a = actions.add_parser("delete", parents=[common], help="drop a held message (asks first)")
    a.add_argument("id")
    a.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def item_json(item: QuarantineItem) -> dict[str, object]:
    return {"id": item.id, "time": item.time, "sender": item.sender, "recipients": list(item.recipients),
            "reason": item.reason, "size": item.size}


def run(args: argparse.Namespace) -> int:
    from scattergate.web.quarantine_ops import (
        QuarantineError,
        QuarantineOps,
        header_block,
        open_store,
    )

    try:
        config = config_of(args)
        store = open_store(config)
    except (ConfigError, QuarantineError) as exc:
        print(f"scattergate: {exc}", file=sys.stderr)
        return 2
    ops = QuarantineOps(config, store)
    try:
        if args.action == "list":
            for item in ops.list(args.search, args.limit):
                if args.json:
                    print(json.dumps(item_json(item)))
                else:
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.time))
                    rcpts = ",".join(item.recipients)
                    print(f"{item.id}\t{when}\t<{item.sender}>\t{rcpts}\t{item.size}\t{item.reason}")
        elif args.action == "show":
            item = ops.get(args.id)
            content = ops.content(item)
            sys.stdout.buffer.write(header_block(content) if args.headers_only else content)
            sys.stdout.flush()
        elif args.action == "release":
            result = asyncio.run(ops.release(args.id, args.to or "", by=_operator()))
            if result.notify_never is None:
                print(f"released {result.item.id} into the local {result.downstream}: {result.reply}")
            else:
                how = "NOTIFY=NEVER" if result.notify_never else "null sender (downstream has no DSN)"
                print(f"released {result.item.id} to {result.downstream} with {how}: {result.reply}")
        elif args.action == "delete":
            item = ops.get(args.id)
            if not confirm(f"Delete quarantined message {item.id} from <{item.sender}>?", args.yes):
                print("scattergate: not deleted", file=sys.stderr)
                return 1
            ops.delete(item.id, by=_operator())
            print(f"deleted {item.id}")
        return 0
    except QuarantineError as exc:
        print(f"scattergate: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"scattergate: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _operator() -> str:
    """Who did it, for the decision record: the command line and the local user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (e.g. a container)
        return "cli"
