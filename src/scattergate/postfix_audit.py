"""Which Postfix settings make this Postfix a backscatter source.

A Postfix makes backscatter when it accepts mail it later cannot deliver (unknown recipients,
relay domains without a recipient list, after-queue filters that refuse) and then bounces it
to the (forged) sender. We read `postconf -n` and the per-service overrides of master.cf
(`postconf -P`), fill in Postfix's defaults for the settings we judge, and name each risky one
with its fix. Pure core (`audit`); the command's shell is cli/check_postfix.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Postfix 3.x defaults (compatibility_level >= 2) of the settings we judge.
DEFAULTS = {
    "compatibility_level": "0",
    "mydestination": "$myhostname, localhost.$mydomain, localhost",
    "relay_domains": "",
    "relay_recipient_maps": "",
    "local_recipient_maps": "proxy:unix:passwd.byname $alias_maps",
    "smtpd_reject_unlisted_recipient": "yes",
    "unverified_recipient_defer_code": "450",
    "unverified_recipient_reject_code": "450",
    "unverified_recipient_tempfail_action": "$reject_tempfail_action",
    "reject_tempfail_action": "defer_if_permit",
    "soft_bounce": "no",
    "smtpd_milters": "",
    "milter_default_action": "tempfail",
    "content_filter": "",
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination",
    "smtpd_recipient_restrictions": "",
    "virtual_alias_maps": "$virtual_maps",
    "virtual_alias_domains": "$virtual_alias_maps",
}
# A local part no real mailbox has: a lookup table that maps it is a catch-all.
_PROBE_LOCAL = "scattergate-no-such-user-7f3a"


@dataclass(frozen=True, slots=True)
class Risk:
    setting: str
    value: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"RISK {self.setting} = {self.value or '(empty)'}\n  why: {self.problem}\n  fix: {self.fix}"


def parse_master_overrides(text: str) -> dict[str, dict[str, str]]:
    """`postconf -P` output ("service/type/name = value") → {"service/type": {name: value}}."""
    services: dict[str, dict[str, str]] = {}
    for name, value in parse_postconf(text).items():
        service, _, parameter = name.rpartition("/")
        if service:
            services.setdefault(service, {})[parameter] = value
    return services


def parse_postconf(text: str) -> dict[str, str]:
    """`postconf -n` output ("name = value", continuation lines indented) → dict."""
    settings: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and name:
            settings[name] += " " + line.strip()
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise ValueError(f"not postconf output: {line[:60]!r}")
        name = key.strip()
        settings[name] = value.strip()
    return settings


def effective(explicit: dict[str, str]) -> dict[str, str]:
    settings = dict(DEFAULTS)
    try:
        level = float(explicit.get("compatibility_level", "0").split(".")[0] or 0)
    except ValueError:
        level = 0
    if level < 2:
        settings["relay_domains"] = "$mydestination"  # the pre-3.0 default
    settings.update(explicit)
    return settings


def expand(value: str, settings: dict[str, str], depth: int = 0) -> str:
    if depth > 10:
        return value
    return re.sub(r"\$\{?(\w+)\}?", lambda m: expand(settings.get(m.group(1), ""), settings, depth + 1), value)


def _items(value: str) -> list[str]:
    """Split a list setting on commas and blanks, but not inside { } (inline: tables)."""
    items, current, depth = [], "", 0
    for char in value:
        depth += (char == "{") - (char == "}")
        if depth == 0 and (char.isspace() or char == ","):
            if current:
                items.append(current)
            current = ""
        else:
            current += char
    if current:
        items.append(current)
    return items


def map_keys(spec: str, read: Callable[[Path], str | None]) -> list[str] | None:
    """Keys of a lookup table we can read (inline:, and the source text of hash:/lmdb:/texthash:
    and friends; the /patterns/ of regexp: and pcre:); None when we cannot tell (ldap:, ...)."""
    if spec.startswith("inline:"):
        body = spec[len("inline:"):].strip().strip("{}")
        return [part.strip().strip("{}").split("=", 1)[0].strip() for part in body.split(",") if part.strip()]
    kind, _, path = spec.partition(":")
    if kind in ("hash", "btree", "lmdb", "cdb", "dbm", "texthash") and path.startswith("/"):
        text = read(Path(path))
        if text is None:
            return None
        return [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if kind in ("regexp", "pcre") and path.startswith("/"):
        text = read(Path(path))
        if text is None:
            return None
        return [match.group(1) for line in text.splitlines()
                if (match := re.match(r"\s*/(.*)/[a-zA-Z]*\s", line + " ")) and not line.lstrip().startswith("#")]
    return None


def catch_all_keys(spec: str, domains: list[str], read: Callable[[Path], str | None]) -> list[str]:
    """Entries of a lookup table that match every address of a domain: "@domain" keys, and
    patterns that match an address no mailbox has."""
    keys = map_keys(spec, read) or []
    if spec.startswith(("regexp:", "pcre:")):
        found = []
        for pattern in keys:
            try:
                compiled = re.compile(pattern, re.IGNORECASE)
            except re.error:
                continue  # a pcre feature Python lacks: cannot tell
            if any(compiled.search(f"{_PROBE_LOCAL}@{domain}") for domain in domains):
                found.append(f"/{pattern}/")
        return found
    return [key for key in keys if key.startswith("@")]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def audit(explicit: dict[str, str], read: Callable[[Path], str | None] = _read,
          services: dict[str, dict[str, str]] | None = None) -> list[Risk]:
    s = effective(explicit)

    def val(name: str) -> str:
        return expand(s.get(name, ""), s).strip()

    risks: list[Risk] = []

    if s["smtpd_reject_unlisted_recipient"].lower() == "no":
        risks.append(Risk("smtpd_reject_unlisted_recipient", "no",
                          "mail for recipients that do not exist is accepted, then bounced to the sender",
                          "smtpd_reject_unlisted_recipient = yes (the default)"))
    for name in ("unverified_recipient_defer_code", "unverified_recipient_reject_code"):
        if s[name].startswith("2"):
            risks.append(Risk(name, s[name],
                              "recipients that failed or could not finish verification are accepted",
                              f"{name} = 450 (or 550 for the reject code)"))
    tempfail = val("unverified_recipient_tempfail_action").lower()
    if tempfail in ("dunno", "permit", "ok"):
        risks.append(Risk("unverified_recipient_tempfail_action", tempfail,
                          "a recipient whose verification is pending is accepted",
                          "unverified_recipient_tempfail_action = defer_if_permit"))
    relay_domains = val("relay_domains")
    restrictions = val("smtpd_relay_restrictions") + " " + val("smtpd_recipient_restrictions")
    verified = re.search(r"\breject_unverified_recipient\b", restrictions) is not None
    if relay_domains and relay_domains != val("mydestination") and not val("relay_recipient_maps") and not verified:
        risks.append(Risk("relay_recipient_maps", s["relay_recipient_maps"],
                          f"every address in the relay domains ({relay_domains}) is accepted; the next "
                          "hop refuses the unknown ones and Postfix bounces them",
                          "relay_recipient_maps = hash:/etc/postfix/relay_recipients (every valid address), "
                          "or reject_unverified_recipient in smtpd_recipient_restrictions"))
    for spec in _items(val("relay_recipient_maps")):
        keys = map_keys(spec, read)
        wild = [k for k in keys or [] if k.startswith("@")]
        if wild:
            risks.append(Risk("relay_recipient_maps", spec,
                              f"wildcard entries ({', '.join(wild[:3])}) accept every address of a domain",
                              "list each valid address instead of @domain"))
    if val("mydestination") and not val("local_recipient_maps"):
        risks.append(Risk("local_recipient_maps", "",
                          "with an empty local_recipient_maps every local address is accepted",
                          "local_recipient_maps = proxy:unix:passwd.byname $alias_maps (the default)"))
    if s["soft_bounce"].lower() == "yes":
        risks.append(Risk("soft_bounce", "yes",
                          "permanent refusals become temporary: mail is queued and bounced days later "
                          "instead of being refused in the dialogue",
                          "soft_bounce = no (use it only briefly while testing a change)"))
    if val("smtpd_milters") and s["milter_default_action"].lower() == "accept":
        risks.append(Risk("milter_default_action", "accept",
                          "when the milter is down, mail is accepted unchecked (no recipient refusals, no "
                          "NOTIFY=NEVER), so Postfix may bounce it later",
                          "milter_default_action = tempfail"))
    filters = [("content_filter", s["content_filter"])] if val("content_filter") else []
    filters += [(f"{service} -o content_filter", overrides["content_filter"])  # master.cf
                for service, overrides in (services or {}).items() if overrides.get("content_filter", "").strip()]
    for setting, value in filters:
        risks.append(Risk(setting, value,
                          "an after-queue filter that refuses a message makes Postfix bounce it to the "
                          "(possibly forged) sender",
                          "filter before the queue (smtpd_milters or smtpd_proxy_filter), or make the "
                          "filter discard/quarantine instead of refusing"))
    domains = sorted({d for name in ("virtual_alias_domains", "mydestination", "relay_domains")
                      for d in _items(val(name)) if ":" not in d and "/" not in d})
    for spec in _items(val("virtual_alias_maps")):
        wild = catch_all_keys(spec, domains, read)
        if wild:
            risks.append(Risk("virtual_alias_maps", spec,
                              f"catch-all entries ({', '.join(wild[:3])}) accept every address of a domain; "
                              "mail the target cannot take is bounced to the (forged) sender",
                              "alias each valid address instead of a whole domain"))
    if not re.search(r"\b(reject|defer)_unauth_destination\b", restrictions):
        risks.append(Risk("smtpd_relay_restrictions", s["smtpd_relay_restrictions"],
                          "no reject_unauth_destination: an open relay accepts mail for anywhere and "
                          "bounces what it cannot deliver",
                          "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, "
                          "reject_unauth_destination"))
    return risks


def master_overrides(config_dir: str | None) -> dict[str, dict[str, str]]:
    """The -o overrides of master.cf (none when the configuration has no master.cf)."""
    directory = config_dir or run_postconf(None, "-h", "config_directory").strip()
    if not (Path(directory) / "master.cf").exists():
        return {}
    return parse_master_overrides(run_postconf(config_dir, "-P"))


def run_postconf(config_dir: str | None, *what: str) -> str:
    binary = shutil.which("postconf") or ("/usr/sbin/postconf" if Path("/usr/sbin/postconf").exists() else None)
    if binary is None:
        raise OSError("postconf not found (is Postfix installed?)")
    command = [binary, *(["-c", config_dir] if config_dir else []), *(what or ("-n",))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise OSError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout
