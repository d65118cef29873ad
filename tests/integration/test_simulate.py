"""`scattergate simulate` end to end: the showcase's own numbers are the promise."""

from __future__ import annotations

import subprocess
import sys

from scattergate.simulate.run import simulate


async def test_simulation_keeps_every_promise() -> None:
    sg, naive = await simulate(rounds=2)
    assert naive.backscatter_emitted == 8 and sg.backscatter_emitted == 0
    assert sg.legit_failures == 4 and sg.legit_notified == sg.legit_failures
    assert naive.backscatter_received == 2 and sg.backscatter_received == 0
    assert sg.genuine_bounces == 2 and sg.genuine_delivered == 2
    assert sg.quarantined == 2  # softfail spam to the full mailbox: not bounced, kept


def test_simulate_command_prints_the_table() -> None:
    result = subprocess.run([sys.executable, "-m", "scattergate", "simulate", "--rounds", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| backscatter emitted (DSNs to forged senders) | 4 | 0 |" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "scattergate", "simulate", "--rounds", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
