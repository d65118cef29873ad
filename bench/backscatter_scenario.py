#!/usr/bin/env python3
"""The backscatter-emitted scenario as a report (DESIGN.md measure 1).

Replays a traffic mix through `serve --spool` into a real Postfix that knows only some of our
users (so some deliveries fail *after* acceptance), with a loopback DNS server publishing the
senders' SPF and DKIM records, and counts every DSN the gateway sends:

    python bench/backscatter_scenario.py --rounds 10
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.scenario import Scenario  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    scenario = Scenario()
    scenario.start()
    started = time.monotonic()
    try:
        outcome = scenario.run(rounds=args.rounds)
    finally:
        scenario.stop()
    told = 100.0 * outcome.legit_told / outcome.legit_failures if outcome.legit_failures else 100.0
    print(f"\nbackscatter scenario, {args.rounds} rounds, {time.monotonic() - started:.1f} s\n")
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| messages sent | {outcome.sent} | |")
    print(f"| refused inside the dialogue | {outcome.refused_in_dialogue} | |")
    print(f"| accepted (spooled) | {outcome.accepted} | |")
    print(f"| delivered | {outcome.delivered} | |")
    print(f"| DSNs to forged / unproven senders | {outcome.dsn_to_forged} | must be 0 |")
    print(f"| proven senders told of their failure | {outcome.legit_told}/{outcome.legit_failures} ({told:.0f}%) | must be 100% |")
    print(f"| quarantined (bounce suppressed) | {outcome.quarantined} | |")
    return 0 if outcome.dsn_to_forged == 0 and told == 100.0 else 1


if __name__ == "__main__":
    sys.exit(main())
