"""SMTP AUTH users file: scrypt hashes, private files, nothing secret in messages or reprs."""

from __future__ import annotations

from pathlib import Path

import pytest

from scattergate.credentials import CredentialsError, hash_password, load_credentials


def users_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "users"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_hash_is_salted_and_verifies(tmp_path: Path) -> None:
    first, second = hash_password("pw"), hash_password("pw")
    assert first != second and first.startswith("scrypt$16384$8$1$")
    credentials = load_credentials(users_file(tmp_path, f"# users\n\nalice:{first}\nbob@example.org:{second}\n"))
    assert len(credentials) == 2
    assert credentials.verify("alice", b"pw") and credentials.verify("bob@example.org", b"pw")
    assert not credentials.verify("alice", b"PW") and not credentials.verify("alice", b"")
    assert not credentials.verify("carol", b"pw")  # unknown: refused (after the same work)
    assert "scrypt" not in repr(credentials) and "alice" not in repr(credentials)


def test_a_users_file_others_can_read_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="users file .* mode 0640"):
        load_credentials(users_file(tmp_path, f"alice:{hash_password('pw')}\n", 0o640))


@pytest.mark.parametrize("line, message", [
    ("alice", "entry 1 is not 'user:hash'"),
    (":scrypt$16384$8$1$AAAAAAAAAAA$" + "A" * 43, "entry 1 is not 'user:hash'"),
    ("alice:hunter2", "entry 1 \\(alice\\) has no valid scrypt hash"),
    ("alice:scrypt$1048577$8$1$AAAAAAAAAAA$" + "A" * 43, "no valid scrypt hash"),  # not a power of 2
    ("alice:scrypt$4194304$8$1$AAAAAAAAAAA$" + "A" * 43, "no valid scrypt hash"),  # too costly
    ("alice:pbkdf2$1$2$3$AAAA$AAAA", "no valid scrypt hash"),
])
def test_malformed_entries_are_named_without_their_content(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(CredentialsError, match=message) as error:
        load_credentials(users_file(tmp_path, line + "\n"))
    assert "hunter2" not in str(error.value)


def test_a_user_twice_is_an_error(tmp_path: Path) -> None:
    entry = f"alice:{hash_password('pw')}\n"
    with pytest.raises(CredentialsError, match="appears twice"):
        load_credentials(users_file(tmp_path, entry + entry))


def test_empty_password_cannot_be_hashed() -> None:
    with pytest.raises(ValueError):
        hash_password("")
