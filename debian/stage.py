"""Lay out the files of the scattergate .deb under a staging root (called by debian/rules).

    BUILD_PYTHON debian/stage.py STAGE_DIR

Run by the Python environment that has scattergate's dependencies installed (the checkout's
.venv, made by scripts/test or `pip install -e .[test]`): their installed files are copied
into /usr/lib/scattergate, so the build needs no network. Which distributions go in is decided
for the interpreter the package runs on, /usr/bin/python3 (its version and platform evaluate
the dependency markers: redis needs async-timeout before Python 3.11.3, as on Debian 12), and
compiled extensions must match its ABI.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
TARGET_PYTHON = "/usr/bin/python3"
LIB = "usr/lib/scattergate"
DOC = "usr/share/doc/scattergate"
UNITS = "lib/systemd/system"

# The marker variables of PEP 508, as the target interpreter sees itself.
_TARGET_ENV = r"""
import json, os, platform, sys
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": platform.python_version(),
    "os_name": os.name, "platform_machine": platform.machine(),
    "platform_python_implementation": platform.python_implementation(),
    "platform_release": platform.release(), "platform_system": platform.system(),
    "platform_version": platform.version(), "python_full_version": platform.python_version(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform,
    "ext_suffix": __import__("sysconfig").get_config_var("EXT_SUFFIX"),
}))
"""


class BuildError(Exception):
    pass


def target_environment() -> dict[str, str]:
    output = subprocess.run([TARGET_PYTHON, "-I", "-c", _TARGET_ENV], capture_output=True, text=True, check=True)
    return json.loads(output.stdout)


def dependency_closure(environment: dict[str, str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions scattergate needs on the target, depth first; missing ones fail."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [(Requirement(r), "scattergate") for r in importlib.metadata.requires("scattergate") or []]
    while pending:
        requirement, wanted_by = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
            continue
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            raise BuildError(f"{requirement} (needed by {wanted_by} on {TARGET_PYTHON} "
                             f"{environment['python_full_version']}) is not installed in {sys.executable}: "
                             f"pip install '{requirement.name}{requirement.specifier}'") from None
        if not requirement.specifier.contains(dist.version, prereleases=True):
            raise BuildError(f"{dist.metadata['Name']} {dist.version} does not satisfy {requirement} ({wanted_by})")
        found[name] = dist
        pending += [(Requirement(r), name) for r in dist.requires or []]  # extras' markers fail above
    return list(found.values())


def copy_distribution(dist: importlib.metadata.Distribution, lib: Path, ext_suffix: str) -> None:
    """The files pip installed for `dist` (its RECORD), those inside site-packages."""
    for entry in dist.files or []:
        relative = entry.as_posix()
        if relative.startswith("..") or "__pycache__" in relative:
            continue  # console scripts live outside site-packages; caches are rebuilt
        if relative.endswith(".so") and not relative.endswith(ext_suffix) and ".cpython-" in relative:
            raise BuildError(f"{relative} is built for another Python than {TARGET_PYTHON} ({ext_suffix})")
        source = Path(str(dist.locate_file(entry)))
        target = lib / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)


def install(source: Path, target: Path, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    os.chmod(target, mode)


def gzipped(data: bytes, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as out:
        out.write(data)


def stage(stage_dir: Path) -> None:
    environment = target_environment()
    lib = stage_dir / LIB
    for dist in dependency_closure(environment):
        copy_distribution(dist, lib, environment["ext_suffix"])
    copy_tree(ROOT / "src/scattergate", lib / "scattergate")
    version = importlib.metadata.version("scattergate")
    info = lib / f"scattergate-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: scattergate\nVersion: {version}\n")
    subprocess.run([TARGET_PYTHON, "-I", "-m", "compileall", "-q", "-j", "0", str(lib)], check=True)
    wrapper = stage_dir / "usr/bin/scattergate"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f"""#!{TARGET_PYTHON} -I
# scattergate, with the libraries of its package (/usr/lib/scattergate beside /usr/bin).
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib" / "scattergate"))
from scattergate.cli import main
sys.exit(main())
""")
    os.chmod(wrapper, 0o755)
    # The manual and completion come from the staged code, run by the target interpreter.
    for module, target in (("manpage", None), ("completion", stage_dir / "usr/share/bash-completion/completions/scattergate")):
        text = subprocess.run([TARGET_PYTHON, "-I", "-c", f"import sys; sys.path.insert(0, {str(lib)!r}); "
                               f"from scattergate import {module}; sys.stdout.write({module}.render())"],
                              capture_output=True, text=True, check=True).stdout
        if target is None:
            gzipped(text.encode(), stage_dir / "usr/share/man/man8/scattergate.8.gz")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    for unit in sorted((ROOT / "contrib/systemd").glob("*.service")):
        install(unit, stage_dir / UNITS / unit.name)
    install(ROOT / "debian/scattergate.toml", stage_dir / "etc/scattergate/scattergate.toml", 0o640)
    install(ROOT / "contrib/scattergate.logrotate", stage_dir / "etc/logrotate.d/scattergate")
    install(ROOT / "debian/scattergate.sysusers", stage_dir / "usr/lib/sysusers.d/scattergate.conf")
    install(ROOT / "debian/copyright", stage_dir / DOC / "copyright")
    install(ROOT / "README.md", stage_dir / DOC / "README.md")
    install(ROOT / "contrib/scattergate.toml", stage_dir / DOC / "examples/scattergate.toml")
    copy_tree(ROOT / "docs", stage_dir / DOC / "docs")
    gzipped((ROOT / "debian/changelog").read_bytes(), stage_dir / DOC / "changelog.Debian.gz")


if __name__ == "__main__":
    try:
        stage(Path(sys.argv[1]))
    except BuildError as exc:
        sys.exit(f"debian/stage.py: {exc}")
