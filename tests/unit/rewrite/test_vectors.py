"""Interop vectors: every Exim prvs case and every postsrsd SRS case, both ways."""

from __future__ import annotations

import json
from calendar import timegm
from datetime import datetime
from pathlib import Path

import pytest

from scattergate.rewrite import batv, srs
from scattergate.rewrite.keys import BatvKeyring

DATA = Path(__file__).resolve().parents[2] / "data" / "batv-srs"
EXIM = json.loads((DATA / "exim_prvs_vectors.json").read_text())
POSTSRSD = json.loads((DATA / "postsrsd_srs_vectors.json").read_text())


def _today(now_utc: str) -> int:
    dt = datetime.strptime(now_utc, "%Y-%m-%d %H:%M:%S")
    return batv.days_since_epoch(timegm(dt.timetuple()))


def _ids(cases: list[dict], key: str) -> list[str]:
    return [f"{i}-{c['op']}-{c.get('variant', '')}-{c[key][:40]}" for i, c in enumerate(cases)]


SIGN = [c for c in EXIM["cases"] if c["op"] == "sign"]
CHECK = [c for c in EXIM["cases"] if c["op"] == "check"]


def test_exim_vector_count() -> None:
    assert len(SIGN) + len(CHECK) == 70


@pytest.mark.parametrize("case", SIGN, ids=_ids(SIGN, "address"))
def test_exim_sign(case: dict) -> None:
    ring = BatvKeyring.from_mapping({case["keynum"]: case["secret"]}, current=case["keynum"])
    tagged = batv.sign(case["address"], ring, _today(case["now_utc"]))
    assert tagged == case["expected"]
    # ...and the other way: our verifier accepts Exim's tag on the signing day.
    assert batv.verify(case["expected"], ring, _today(case["now_utc"])).status is batv.BatvStatus.VALID


_EXPECTED_STATUS = {
    "same_day": batv.BatvStatus.VALID,
    "plus_6_days": batv.BatvStatus.VALID,
    "minus_1_day": batv.BatvStatus.VALID,
    "plus_8_days": batv.BatvStatus.EXPIRED,
    "wrong_secret": batv.BatvStatus.BAD_SIGNATURE,
    "tampered_localpart": batv.BatvStatus.BAD_SIGNATURE,
    "uppercased_tag": batv.BatvStatus.BAD_SIGNATURE,
    "malformed_or_untagged": batv.BatvStatus.NOT_SIGNED,
}


@pytest.mark.parametrize("case", CHECK, ids=_ids(CHECK, "tagged"))
def test_exim_check(case: dict) -> None:
    parsed = batv.parse(case["tagged"])
    key = parsed.key if parsed else "1"
    ring = BatvKeyring.from_mapping({key: case["secret"]}, current=key)
    result = batv.verify(case["tagged"], ring, _today(case["now_utc"]))

    assert result.valid is case["valid"]
    assert result.status is _EXPECTED_STATUS[case["variant"]]
    # Exim's prvscheck output: "" when not prvs syntax, else "R=<1|> A=<address> K=<key>".
    if case["exim_output"] == "":
        assert parsed is None
    else:
        assert parsed is not None
        exim = dict(part.split("=", 1) for part in case["exim_output"].split(" "))
        assert exim["A"] == result.address
        assert exim["K"] == result.key
        assert (exim["R"] == "1") is result.valid


# --- SRS --------------------------------------------------------------------------------------

CFG = POSTSRSD["config"]
SECRETS = [CFG["secret"]]
TODAY = CFG["now_unix"] // 86400
DOMAIN = CFG["local_domains"][0]
SRS_CASES = POSTSRSD["cases"]
DB_CASES = POSTSRSD["database_mode_cases_raw"]


def _expected_reply(case: dict) -> str:
    if case["expected_status"] == "OK":
        return f"OK {case['expected']}"
    return f"{case['expected_status']} {case['message']}"


def test_postsrsd_vector_count() -> None:
    assert len(SRS_CASES) + len(DB_CASES) == 37


@pytest.mark.parametrize("case", SRS_CASES, ids=_ids(SRS_CASES, "input"))
def test_postsrsd_case(case: dict) -> None:
    request = case["input"] if case["op"] == "raw" else f"{case['op']} {case['input']}"
    reply = srs.socketmap_reply(request, DOMAIN, SECRETS, TODAY, local_domains=CFG["local_domains"])
    assert reply == _expected_reply(case)

    if case["op"] == "forward":
        res = srs.forward(case["input"], DOMAIN, SECRETS, TODAY)
    elif case["op"] == "reverse":
        res = srs.reverse(case["input"], SECRETS, TODAY)
    else:
        return
    assert res.address == case["expected"]
    if not res.ok:
        assert res.message == case["message"]
        assert res.permanent is (case["expected_status"] == "PERM")


FORWARD_OK = [c for c in SRS_CASES if c["op"] == "forward" and c["expected_status"] == "OK"]


@pytest.mark.parametrize("case", FORWARD_OK, ids=_ids(FORWARD_OK, "input"))
def test_postsrsd_forward_reverses(case: dict) -> None:
    """The other way round: what we (and postsrsd) emit reverses to where bounces must go."""
    back = srs.reverse(case["expected"], SECRETS, TODAY)
    local = case["input"].partition("@")[0]
    if local.upper().startswith("SRS1"):
        # SRS1 bounces go straight to the first forwarder, never back through the middle one.
        _, _, first_host, opaque = local.split("=", 3)
        assert back.address == f"SRS0{opaque}@{first_host}"
    else:
        assert back.address == case["input"]


class DictStore:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.ttls: dict[str, int] = {}

    def read(self, key: str) -> str | None:
        return self.data.get(key)

    def write(self, key: str, value: str, ttl_seconds: int) -> None:
        self.data[key] = value
        self.ttls[key] = ttl_seconds


def test_postsrsd_database_mode_in_order() -> None:
    store = DictStore()
    for request, expected in DB_CASES:
        reply = srs.socketmap_reply(request, DOMAIN, SECRETS, TODAY, local_domains=CFG["local_domains"], store=store)
        assert reply == expected, request
    assert store.ttls == {"DCJGDE6N24LCRT41A4T0G1UIF0DTKKQJ@1": 21 * 86400}
