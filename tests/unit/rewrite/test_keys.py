"""Secret files: formats, permission refusal, secrets never printed."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from scattergate.rewrite.keys import (
    BatvKeyring,
    Secret,
    SecretFileError,
    SrsSecrets,
    load_batv_keyring,
    load_srs_secrets,
)


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def test_srs_file_first_line_signs(tmp_path: Path) -> None:
    p = _write(tmp_path / "srs", "# rotated 2024-03\nnew secret \n\nold\n")
    s = load_srs_secrets(p)
    assert [x.reveal() for x in s] == [b"new secret ", b"old"]  # only the line end is stripped
    assert s.signing.reveal() == b"new secret "


def test_batv_file(tmp_path: Path) -> None:
    p = _write(tmp_path / "batv", "2:new:with:colons\n1:old\n")
    ring = load_batv_keyring(p)
    assert ring.current == "2"
    assert ring.signing_key.reveal() == b"new:with:colons"
    assert ring.get("1").reveal() == b"old"  # type: ignore[union-attr]
    assert ring.get("3") is None


@pytest.mark.parametrize(
    "text", ["x:TOPSECRET\n", "12:TOPSECRET\n", "TOPSECRET\n", "1:\n", "1:TOPSECRET\n1:TOPSECRET\n", "# TOPSECRET\n"]
)
def test_batv_file_malformed(tmp_path: Path, text: str) -> None:
    p = _write(tmp_path / "batv", text)
    with pytest.raises(SecretFileError) as exc:
        load_batv_keyring(p)
    assert str(p) in str(exc.value)
    assert "TOPSECRET" not in str(exc.value)


def test_empty_srs_file(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="holds no secret"):
        load_srs_secrets(_write(tmp_path / "srs", "\n# only a comment\n"))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620, 0o660, 0o602])
def test_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    p = _write(tmp_path / "srs", "s3cret\n", mode)
    with pytest.raises(SecretFileError) as exc:
        load_srs_secrets(p)
    assert str(p) in str(exc.value)
    assert f"{mode:04o}" in str(exc.value)
    assert "s3cret" not in str(exc.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_accepts_private_file(tmp_path: Path, mode: int) -> None:
    assert len(load_srs_secrets(_write(tmp_path / "srs", "s\n", mode))) == 1


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="nope"):
        load_srs_secrets(tmp_path / "nope")


def test_directory_refused(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(SecretFileError):
        load_srs_secrets(d)


def test_secrets_never_in_repr_or_str() -> None:
    s = Secret("hunter2")
    ring = BatvKeyring.from_mapping({"1": "hunter2"}, current="1")
    srs = SrsSecrets.of(["hunter2", "other"])
    for obj in (s, ring, srs):
        assert "hunter2" not in repr(obj) and "hunter2" not in str(obj)
        assert "hunter2" not in f"{obj!r} {obj}"
    assert "hunter2" not in repr([s, {"k": ring}])


def test_secret_refuses_pickle_and_empty() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Secret("x"))
    with pytest.raises(ValueError):
        Secret("")


def test_keyring_validation() -> None:
    with pytest.raises(ValueError):
        BatvKeyring.from_mapping({"1": "a"}, current="2")
    with pytest.raises(ValueError):
        BatvKeyring.from_mapping({"10": "a"}, current="10")
    with pytest.raises(ValueError):
        SrsSecrets.of([])


def test_site_secret_created_once_when_workers_race(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Regression: two workers starting together both tried O_EXCL; the loser crashed."""
    import multiprocessing

    from scattergate.rewrite.keys import load_or_create_site_secret

    path = tmp_path / "site.key"
    context = multiprocessing.get_context("fork")
    with context.Pool(8) as pool:
        secrets = pool.map(_reveal_site_secret, [str(path)] * 32)
    assert len(set(secrets)) == 1 and len(secrets[0]) == 64
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.key"]  # no temporary files left
    assert load_or_create_site_secret(path).reveal().decode() == secrets[0]


def _reveal_site_secret(path: str) -> str:
    from scattergate.rewrite.keys import load_or_create_site_secret

    return load_or_create_site_secret(path).reveal().decode()
