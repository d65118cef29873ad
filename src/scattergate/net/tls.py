"""TLS contexts: the listener's (STARTTLS offered to clients) and the downstream client's.

Both come from the stdlib `ssl` module; this module only turns configuration into contexts and
every way a certificate or key can be unusable into a `ConfigError` that names the file.
"""

from __future__ import annotations

import os
import ssl
import stat

from scattergate.config import ConfigError

VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def server_context(cert_file: str, key_file: str, min_version: str = "TLSv1.2") -> ssl.SSLContext:
    """The context for STARTTLS on our listener; ConfigError when the files are unusable."""
    for key, name in (("tls.cert_file", cert_file), ("tls.key_file", key_file)):
        if not name:
            raise ConfigError(f"{key} is required when TLS is configured")
        if not os.access(name, os.R_OK):
            raise ConfigError(f"{key}: cannot read {name}")
    mode = stat.S_IMODE(os.stat(key_file).st_mode)
    if mode & 0o007:
        # A private key anyone on the host can read is no longer private.
        raise ConfigError(f"tls.key_file: {key_file} has mode {mode:04o}; it must not be accessible "
                          f"to other users (chmod 600 or 640 {key_file})")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _version(min_version, "tls.min_version")
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        reason = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else exc.reason
        raise ConfigError(f"tls: cannot use {cert_file} with {key_file}: {reason or exc}") from None
    except OSError as exc:
        raise ConfigError(f"tls: cannot load {cert_file} / {key_file}: {exc.strerror or exc}") from None
    return context


def client_context(*, verify: bool, ca_file: str = "") -> ssl.SSLContext:
    """The context for STARTTLS towards the downstream.

    With `verify`, the certificate must chain to `ca_file` (or the system's CAs) and name the
    server; without it any certificate is taken (opportunistic TLS: encryption against passive
    eavesdroppers, as MTAs do by default)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None) if verify \
        else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def checked_client_context(*, verify: bool, ca_file: str) -> ssl.SSLContext:
    try:
        return client_context(verify=verify, ca_file=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"delivery.tls_ca_file: cannot load {ca_file}: {exc}") from None


def _version(name: str, key: str) -> ssl.TLSVersion:
    try:
        return VERSIONS[name]
    except KeyError:
        raise ConfigError(f"{key}: {name!r} is not one of {', '.join(VERSIONS)}") from None
