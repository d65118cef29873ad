"""scattergate(8) and the bash completion, both written from the command's own argparse parser:
the manual formats without a warning and names every command and flag; real bash completes."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from scattergate import completion, manpage
from tests.conftest import require_binary


def formatted_manual(tmp_path: Path) -> str:
    source = tmp_path / "scattergate.8"
    source.write_text(manpage.render())
    groff = require_binary("groff")
    lint = subprocess.run([groff, "-man", "-ww", "-z", "-Tutf8", str(source)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and lint.stderr == "", lint.stderr  # no roff warnings
    shown = subprocess.run([groff, "-man", "-Tascii", "-P-cbou", "-rLL=200n", str(source)],
                           capture_output=True, text=True, timeout=60, check=True)
    return shown.stdout


def test_the_manual_documents_every_command_and_flag(tmp_path: Path) -> None:
    text = formatted_manual(tmp_path)
    sections = re.split(r"\n   (scattergate [\w -]+)\n", text)
    documented = dict(zip(sections[1::2], sections[2::2]))
    leaves = [c for c in manpage.commands(manpage.build_parser()) if not manpage.has_subcommands(c.parser)]
    assert {f"scattergate {' '.join(c.path)}" for c in leaves} == set(documented)
    for command in leaves:
        body = documented[f"scattergate {' '.join(command.path)}"]
        for action in manpage.options(command.parser):
            for flag in set(action.option_strings) - {"-h", "--help"}:
                assert flag in body, (command.path, flag)
    assert "scattergate - a mail gateway that ends email backscatter" in text
    assert "USR1" in text and "/etc/scattergate/scattergate.toml" in text


def complete(tmp_path: Path, line: str) -> list[str]:
    script = tmp_path / "scattergate.bash"
    script.write_text(completion.render())
    program = (f'source {script}\nCOMP_WORDS=({line})\n'
               + ('COMP_WORDS+=("")\n' if line.endswith(" ") else "")
               + 'COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n_scattergate\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run([require_binary("bash"), "-c", program], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "LC_ALL": "C"})
    assert result.returncode == 0, result.stderr
    return [word for word in result.stdout.splitlines() if word]


@pytest.mark.parametrize(("line", "expected"), [
    ("scattergate se", ["serve"]),
    ("scattergate serve --sys", ["--syslog"]),
    ("scattergate quarantine re", ["release"]),
    ("scattergate quarantine release --t", ["--to"]),
    ("scattergate serve --log-level ", ["debug", "info", "warning", "error"]),
    ("scattergate policy --timeout-action d", ["dunno", "defer_if_permit"]),
    ("scattergate serve --listen ", []),  # free text: nothing to offer
])
def test_bash_completes_commands_flags_and_choices(tmp_path: Path, line: str, expected: list[str]) -> None:
    assert complete(tmp_path, line) == expected


def test_bash_completes_file_names_for_a_file_flag(tmp_path: Path) -> None:
    (tmp_path / "sg.toml").write_text("")
    (tmp_path / "data").mkdir()
    assert complete(tmp_path, "scattergate serve --config sg") == ["sg.toml"]
    assert complete(tmp_path, "scattergate serve --data-dir d") == ["data"]
