"""The container recipe, checked statically (no container engine on the test machines): what the
build context lets into the image, and whether `docker stop` waits long enough for the drain."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from scattergate.serve import DRAIN_SECONDS

ROOT = Path(__file__).resolve().parents[2]


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as Docker reads it: (is_exception, pattern) in order; the last match wins."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        rules.append((exception, re.compile(regex + "(?:/.*)?")))  # a directory takes its contents
    return rules


def excluded(path: str) -> bool:
    verdict = False
    for exception, pattern in ignore_rules():
        if pattern.fullmatch(path):
            verdict = not exception
    return verdict


def test_the_site_secret_state_and_virtualenvs_never_reach_the_image() -> None:
    for path in (".venv/bin/python", ".venv/lib/python3.11/site-packages/redis/__init__.py",
                 "scattergate-data/site.key", "scattergate-data/state.sqlite3",
                 "scattergate-data/quarantine/abc.eml", "scattergate-data/scattergate.log",
                 "data/site.key", "srs.secrets", "batv.keys", "tls/server.key", "tls/server.pem",
                 ".git/config", "venv/bin/python", "dist/scattergate-0.1.0.tar.gz", "scattergate_0.1.0_amd64.deb",
                 # a user's leftovers inside the allowed tree are still kept out
                 "src/scattergate-data/site.key", "src/scattergate/__pycache__/cli.cpython-311.pyc",
                 "src/scattergate.egg-info/PKG-INFO", "src/.venv/bin/python", "src/site.key"):
        assert excluded(path), path


def test_what_pip_install_needs_is_in_the_build_context() -> None:
    for path in ("pyproject.toml", "README.md", "LICENSE", "src/scattergate/__init__.py",
                 "src/scattergate/cli.py", "src/scattergate/frontends/smtp.py"):
        assert not excluded(path), path
    # every tracked source file of the package: nothing the build needs is filtered out
    for path in (ROOT / "src").rglob("*.py"):
        relative = path.relative_to(ROOT).as_posix()
        assert "__pycache__" in relative or not excluded(relative), relative


def test_docker_stop_waits_for_the_drain() -> None:
    containerfile = (ROOT / "contrib/Containerfile").read_text()
    assert re.search(r"^STOPSIGNAL SIGTERM$", containerfile, re.M)  # the signal serve drains on
    documented = [int(s) for s in re.findall(r"--stop-timeout (\d+)", containerfile)]
    assert documented and all(seconds > DRAIN_SECONDS for seconds in documented)
    compose = yaml.safe_load((ROOT / "contrib/compose.yaml").read_text())["services"]["scattergate"]
    assert compose["stop_signal"] == "SIGTERM"
    grace = re.fullmatch(r"(\d+)s", compose["stop_grace_period"])
    assert grace and int(grace.group(1)) > DRAIN_SECONDS
    assert compose["build"] == {"context": "..", "dockerfile": "contrib/Containerfile"}
