"""`scattergate classify|batv|srs`, run as a user runs them, checked against the vectors."""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "batv-srs"
CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "data" / "sisimai"


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scattergate", *args], capture_output=True, text=True,
                          timeout=60, input=stdin.decode() if stdin else None)


def secret_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "secret"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def epoch(utc: str) -> str:
    return str(calendar.timegm(time.strptime(utc, "%Y-%m-%d %H:%M:%S")))


def test_batv_sign_reproduces_exim(tmp_path: Path) -> None:
    cases = [c for c in json.loads((DATA / "exim_prvs_vectors.json").read_text())["cases"] if c["op"] == "sign"]
    assert cases
    for case in cases:
        secrets = secret_file(tmp_path, f"{case['keynum']}:{case['secret']}\n")
        result = run("batv", "sign", case["address"], "--secret-file", secrets, "--now", epoch(case["now_utc"]))
        assert (result.returncode, result.stdout.strip()) == (0, case["expected"]), case


def test_batv_verify_exit_codes(tmp_path: Path) -> None:
    secrets = secret_file(tmp_path, "1:secret\n")
    signed = "prvs=1269440928=user@example.org"  # Exim, 2020-01-01, expires 7 days later
    ok = run("batv", "verify", signed, "--secret-file", secrets, "--now", epoch("2020-01-03 00:00:00"))
    assert (ok.returncode, ok.stdout.strip()) == (0, "user@example.org")
    expired = run("batv", "verify", signed, "--secret-file", secrets, "--now", epoch("2020-01-20 00:00:00"))
    assert expired.returncode == 1 and "expired" in expired.stderr
    forged = run("batv", "verify", "prvs=1269000000=user@example.org", "--secret-file", secrets,
                 "--now", epoch("2020-01-03 00:00:00"))
    assert forged.returncode == 1


def test_secret_files_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "open"
    path.write_text("1:secret\n")
    path.chmod(0o644)
    result = run("batv", "sign", "user@example.org", "--secret-file", str(path))
    assert result.returncode == 2 and "chmod 600" in result.stderr and "secret\n" not in result.stderr


def test_srs_forward_and_reverse_reproduce_postsrsd(tmp_path: Path) -> None:
    vectors = json.loads((DATA / "postsrsd_srs_vectors.json").read_text())
    config = vectors["config"]
    secrets = secret_file(tmp_path, config["secret"] + "\n")
    now = str(config["now_unix"])
    checked = 0
    for case in vectors["cases"]:
        if case["expected_status"] != "OK" or case["op"] not in ("forward", "reverse"):
            continue
        if case["op"] == "forward":
            result = run("srs", "forward", case["input"], "--alias-domain", config["local_domains"][0],
                         "--secret-file", secrets, "--now", now)
        else:
            result = run("srs", "reverse", case["input"], "--secret-file", secrets, "--now", now)
        assert (result.returncode, result.stdout.strip()) == (0, case["expected"]), case
        checked += 1
    assert checked >= 5
    bad = run("srs", "reverse", "SRS0=AAAA=2W=otherdomain.com=test@example.com", "--secret-file", secrets, "--now", now)
    assert bad.returncode == 1


def test_classify_json_lines() -> None:
    bounces = sorted((CORPUS).rglob("*.eml"))[:3]
    if not bounces:
        pytest.fail("the classifier corpus copy is missing under tests/corpus/data/sisimai")
    result = run("classify", "--json", *map(str, bounces))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3
    for line, path in zip(lines, bounces):
        assert line["file"] == str(path)
        assert set(line) >= {"kind", "confidence", "original_message_id", "original_sender", "failed_recipients"}
    ordinary = run("classify", "--json", "-", stdin=b"From: a@example.org\r\nSubject: lunch\r\n\r\nhi\r\n")
    assert json.loads(ordinary.stdout)["kind"] == "none"
    vacation = run("classify", "--json", "-",
                   stdin=b"From: b@example.org\r\nAuto-Submitted: auto-replied\r\nSubject: Out of office\r\n\r\naway\r\n")
    assert json.loads(vacation.stdout)["kind"] == "autoreply"
