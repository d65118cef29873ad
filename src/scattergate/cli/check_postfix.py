"""`scattergate check-postfix`: name the Postfix settings that make it a backscatter source.

Exit codes: 0 no risk found, 1 risks found, 2 could not run postconf / read its output.
The judgement is postfix_audit.audit (pure); this is its shell.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scattergate.postfix_audit import audit, master_overrides, parse_postconf, run_postconf


def main(config_dir: str | None = None, postconf_output: str | None = None) -> int:
    try:
        text = Path(postconf_output).read_text() if postconf_output else run_postconf(config_dir)
        explicit = parse_postconf(text)
        # master.cf overrides (-o) only with a live Postfix: saved `postconf -n` has none.
        services = master_overrides(config_dir) if not postconf_output else {}
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"scattergate check-postfix: cannot read the Postfix configuration: {exc}", file=sys.stderr)
        return 2
    risks = audit(explicit, services=services)
    for risk in risks:
        print(risk)
    if risks:
        print(f"\n{len(risks)} setting(s) make this Postfix a backscatter source.")
        return 1
    print("No backscatter risk found in the Postfix settings checked.")
    return 0
