"""Any bytes a client can send, as the front ends carry them (UTF-8 with surrogateescape), in
any field of any record of a batch: every record is stored, none is lost (issue 15)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from scattergate.state.sqlite import SqliteStore
from scattergate.state.store import DecisionRecord, storable

client_text = st.binary(max_size=40).map(lambda raw: raw.decode("utf-8", "surrogateescape"))


@st.composite
def decisions(draw: st.DrawFn, n: int) -> DecisionRecord:
    return DecisionRecord(
        time=float(n), session=f"s{n}", client="192.0.2.1", helo=draw(client_text),
        sender=draw(client_text), recipients=tuple(draw(st.lists(client_text, max_size=3))),
        phase="rcpt", verdict="reject", reply=draw(client_text),
        findings=tuple(draw(st.lists(client_text, max_size=2))),
    )


@st.composite
def batches(draw: st.DrawFn) -> list[DecisionRecord]:
    return [draw(decisions(n)) for n in range(draw(st.integers(1, 8)))]


@settings(max_examples=60, deadline=None)
@given(batch=batches(), counter=client_text)
def test_every_record_of_a_batch_is_stored_escaped(tmp_path_factory, batch: list[DecisionRecord],
                                                   counter: str) -> None:
    store = SqliteStore(Path(tmp_path_factory.mktemp("fuzz")) / "state.db")
    try:
        store.add({"sessions": len(batch), f"findings.{counter}": 1}, batch)
        stored = {d.session: d for d in store.recent_decisions(limit=100)}
        assert len(stored) == len(batch)
        for original in batch:
            kept = stored[original.session]
            assert kept.helo == storable(original.helo) and kept.sender == storable(original.sender)
            assert kept.recipients == tuple(storable(r) for r in original.recipients)
            assert kept.reply == storable(original.reply)
            assert kept.findings == tuple(storable(f) for f in original.findings)
        counters = store.counters()
        assert counters["sessions"] == len(batch) and counters[f"findings.{storable(counter)}"] == 1
    finally:
        store.close()


@given(st.lists(st.text(alphabet=st.sampled_from(["a", "é", "\udcff", "\ud83d", "\ude00", "😀", "<", " "]),
                        max_size=6), min_size=9, max_size=9),
       st.sampled_from([1.5, 2]))
def test_a_storable_record_is_the_record_made_storable_field_by_field(texts: list[str], when: float) -> None:
    from scattergate.state.store import storable_decision

    d = DecisionRecord(time=when, session=texts[0], client=texts[1], helo=texts[2], sender=texts[3],
                       recipients=(texts[4], texts[5]), phase=texts[6], verdict=texts[7], reply=texts[8],
                       findings=(texts[0] + texts[8],))
    expected = DecisionRecord(
        time=float(d.time), session=storable(d.session), client=storable(d.client), helo=storable(d.helo),
        sender=storable(d.sender), recipients=tuple(storable(r) for r in d.recipients), phase=storable(d.phase),
        verdict=storable(d.verdict), reply=storable(d.reply), findings=tuple(storable(f) for f in d.findings))
    stored = storable_decision(d)
    assert stored == expected and type(stored.time) is float
