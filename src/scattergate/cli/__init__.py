"""The `scattergate` command: argument parsing and the subcommands' front doors.

`main(argv) -> int` (cli/main.py) is the console script; each subcommand group has its module
here (tools, passwd, quarantine, check_postfix). What they run lives elsewhere: serve.py,
the front ends, audit/, simulate/.
"""

from scattergate.cli.main import apply_overrides, build_parser, load_config, main

__all__ = ["apply_overrides", "build_parser", "load_config", "main"]
