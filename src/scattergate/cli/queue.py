"""`scattergate queue list|flush|hold|release|delete`: the spool from a shell.

Postfix's mailq, `postqueue -f` and `postsuper -h/-H/-d` for store-and-forward mode. The work
is done by delivery/queue_admin.py under the spool's lock, so it is safe while gateways with
any number of workers deliver from the same spool. Exit codes: 0 done, 1 the operation failed
(unknown id, message busy), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable

from scattergate.cli.admin import common_args, config_of, confirm
from scattergate.config import ConfigError
from scattergate.delivery import queue_admin
from scattergate.delivery.queue_admin import QueuedMessage, QueueError
from scattergate.delivery.spool import Spool

ALL = "ALL"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("queue", help="list, flush, hold, release or delete spooled messages",
                       description="Work on the store-and-forward spool of a gateway (its --data-dir or "
                                   "--config), like mailq, postqueue -f and postsuper.")
    common = common_args()
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                         help="how long to wait for a delivery in progress to finish (default 60)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", parents=[common], help="the queued messages, oldest first (mailq)")
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a = actions.add_parser("flush", parents=[common],
                           help="deliver now: every queued message (or the IDs given) is due at once (postqueue -f)")
    a.add_argument("ids", nargs="*", metavar="ID")
    a = actions.add_parser("hold", parents=[common, waiting], help="keep a message from delivery until released (postsuper -h)")
    a.add_argument("id", metavar="ID|ALL")
    a = actions.add_parser("release", parents=[common, waiting], help="take a message off hold, due at once (postsuper -H)")
    a.add_argument("id", metavar="ID|ALL")
    a = actions.add_parser("delete", parents=[common, waiting],
                           help="remove a message without delivering it and without a DSN (postsuper -d)")
    a.add_argument("id", metavar="ID|ALL")
    a.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _age(seconds: float) -> str:
    """Like 45s, 12m30s, 5h02m, 3d04h: the two largest units."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


def _next_try(message: QueuedMessage, now: float) -> str:
    if message.held:
        return "held"
    if message.next_attempt <= now:
        return "now"
    return _when(message.next_attempt)


def _print_list(messages: list[QueuedMessage], as_json: bool) -> None:
    now = time.time()
    for m in messages:
        if as_json:
            print(json.dumps(m.to_json(now)))
        else:
            error = " ".join(m.last_error.split()) or "-"  # one line, one column: the downstream's text
            print(f"{m.id}\t{_age(now - m.arrival)}\t<{m.sender}>\t{','.join(m.recipients)}\t"
                  f"{_next_try(m, now)}\t{error}")
    if not as_json:
        held = sum(m.held for m in messages)
        print(f"-- {len(messages)} message(s) queued, {held} held", file=sys.stderr)


def _targets(spool: Spool, message_id: str) -> list[str]:
    return spool.ids() if message_id == ALL else [message_id]


def _each(spool: Spool, message_id: str, verb: str, act: Callable[..., None], wait: float) -> int:
    """Apply `act` to one message or to ALL; report each; exit 1 if any failed."""
    failed = 0
    for target in _targets(spool, message_id):
        try:
            act(spool, target, wait=wait)
            print(f"{verb} {target}")
        except QueueError as exc:
            # With ALL, a message delivered meanwhile is no failure: it is gone, as asked.
            if message_id == ALL and not spool.message_path(target).exists():
                continue
            print(f"scattergate: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _wake(spool: Spool) -> None:
    woken = queue_admin.wake(spool)
    if woken:
        print(f"woke {woken} running delivery process(es)")
    else:
        print("no running gateway listens on this spool: delivery starts when it runs")


def run(args: argparse.Namespace) -> int:
    try:
        config = config_of(args)
    except ConfigError as exc:
        print(f"scattergate: {exc}", file=sys.stderr)
        return 2
    root = config.data_dir / "spool"
    if not root.is_dir():
        print(f"scattergate: no spool at {root} (is --data-dir right, and spool mode on?)", file=sys.stderr)
        return 2
    spool = Spool(root, spares=0)  # a one-off process: what it removes is not kept for reuse
    if args.action == "list":
        _print_list(queue_admin.listing(spool), args.json)
        return 0
    if args.action == "flush":
        ids = args.ids or spool.ids()
        unknown = [i for i in args.ids if not spool.message_path(i).exists()]
        due, busy = queue_admin.flush(spool, ids)
        print(f"{due} message(s) due now" + (f", {busy} being delivered already" if busy else ""))
        _wake(spool)
        for message_id in unknown:
            print(f"scattergate: no queued message {message_id!r}", file=sys.stderr)
        return 1 if unknown else 0
    if args.action == "hold":
        return _each(spool, args.id, "held", queue_admin.hold, args.wait)
    if args.action == "release":
        code = _each(spool, args.id, "released", queue_admin.release, args.wait)
        _wake(spool)
        return code
    if args.action == "delete":
        what = "every queued message" if args.id == ALL else f"queued message {args.id}"
        if args.id != ALL and not spool.message_path(args.id).exists():
            print(f"scattergate: no queued message {args.id!r}", file=sys.stderr)
            return 1
        if not confirm(f"Delete {what} without delivering it and without a DSN?", args.yes):
            print("scattergate: not deleted", file=sys.stderr)
            return 1
        return _each(spool, args.id, "deleted", queue_admin.delete, args.wait)
    return 2
