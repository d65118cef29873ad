"""`scattergate check-postfix -c DIR` against real postconf."""

from __future__ import annotations

import shutil

import pytest

from scattergate.cli import main
from tests.conftest import require_binary
from tests.system.postfix_fixtures import world_dir

pytestmark = pytest.mark.system


@pytest.mark.parametrize("extra, code", [("", 0), ("soft_bounce = yes\nunverified_recipient_defer_code = 250\n", 1)])
def test_check_postfix_reads_postconf(extra: str, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("postconf")
    root = world_dir("sg-check-")
    try:
        (root / "main.cf").write_text(
            "compatibility_level = 3.6\nrelay_domains = example.org\n"
            "relay_recipient_maps = inline:{ {user@example.org = ok} }\n" + extra)
        assert main(["check-postfix", "-c", str(root)]) == code
        out = capsys.readouterr().out
        if code:
            assert "soft_bounce" in out and "unverified_recipient_defer_code" in out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_check_postfix_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("postconf")
    assert main(["check-postfix", "-c", "/nonexistent/postfix"]) == 2


def test_check_postfix_reads_master_cf_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("postconf")
    root = world_dir("sg-check-")
    try:
        (root / "main.cf").write_text(
            "compatibility_level = 3.6\nrelay_domains = example.org\n"
            "relay_recipient_maps = inline:{ {user@example.org = ok} }\n")
        (root / "master.cf").write_text("smtp inet n - n - - smtpd\n  -o content_filter=amavis:[127.0.0.1]:10024\n")
        assert main(["check-postfix", "-c", str(root)]) == 1
        assert "smtp/inet -o content_filter = amavis:[127.0.0.1]:10024" in capsys.readouterr().out
    finally:
        shutil.rmtree(root, ignore_errors=True)
