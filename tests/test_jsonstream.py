"""The streaming document reader (_core/jsonstream.py) gives exactly what
json.loads followed by parse_data_sync gives, and holds far less at once."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featbit_shm._core import jsonstream
from featbit_shm._core.protocol import DataSyncMessage, parse_frame
from featbit_shm._core.wire import Entities, WireError, parse_data_sync, parse_envelope
from featbit_shm.testing import builders as b

T0 = 1_700_000_000_000


def outcome(loads: Callable[[Any], Any], text: str | bytes) -> Any:
    """Everything a caller can observe: the message's entities, bytes for
    bytes, and what was skipped; or the error, with its message."""
    try:
        document = loads(text)
        if isinstance(document, dict) and "messageType" in document:
            message = parse_envelope(document)
        else:
            message = parse_data_sync(document)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, WireError
        return (type(exc).__name__, str(exc))
    return (
        message.event_type,
        [(p.key, p.version, p.archived, p.blob, p.is_segment) for p in message.flags],  # type: ignore[union-attr]
        [(p.key, p.version, p.archived, p.blob, p.is_segment) for p in message.segments],  # type: ignore[union-attr]
        message.skipped,
    )


def streamed(text: str | bytes) -> Any:
    return jsonstream.loads(text, stream_at=0)


GOOD_FLAGS = st.builds(
    lambda i, on, rules: b.flag(
        f"flag-{i}",
        variations=["a", "b"],
        variation_type="string",
        enabled=on,
        rules=[b.rule([b.cond("country", "IsOneOf", ["us", "fr"])], b.serve(1))] if rules else [],
        updated_at=T0 + i,
    ),
    st.integers(0, 50),
    st.booleans(),
    st.booleans(),
)
GOOD_SEGMENTS = st.builds(lambda i, keys: b.segment(f"seg-{i}", included=keys, updated_at=T0 + i), st.integers(0, 20), st.lists(st.text(max_size=4), max_size=4))
ODD = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.just({"key": "half"}), st.just({}))
LISTS = st.one_of(st.lists(st.one_of(GOOD_FLAGS, GOOD_SEGMENTS, ODD), max_size=6), st.none(), st.just({"not": "a list"}), st.just("x"))


@st.composite
def documents(draw: st.DrawFn) -> str:
    data: dict[str, Any] = {
        "eventType": draw(st.sampled_from(["full", "patch", "other", None])),
        "featureFlags": draw(st.one_of(st.lists(st.one_of(GOOD_FLAGS, ODD), max_size=6), LISTS)),
        "segments": draw(st.one_of(st.lists(st.one_of(GOOD_SEGMENTS, ODD), max_size=4), LISTS)),
    }
    if draw(st.booleans()):
        data["extra"] = draw(st.one_of(ODD, st.dictionaries(st.text(max_size=3), ODD, max_size=2)))
    order = draw(st.permutations(list(data)))
    data = {k: data[k] for k in order if draw(st.integers(0, 9)) > 0}  # now and then a key is missing
    if draw(st.booleans()):
        envelope: Any = {"messageType": draw(st.sampled_from(["data-sync", "pong", "other"])), "data": data}
        if draw(st.booleans()):
            envelope = {"data": data, "messageType": envelope["messageType"]}  # the envelope's keys the other way round
    else:
        envelope = data  # a polled body without an envelope
    indent = draw(st.sampled_from([None, 0, 2]))
    separators = draw(st.sampled_from([None, (",", ":"), (" , ", " : ")]))
    text = json.dumps(envelope, indent=indent, separators=separators)
    return draw(st.sampled_from(["", " ", "\n\t "])) + text + draw(st.sampled_from(["", " ", "\r\n"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_a_document_gives_what_json_loads_and_parse_data_sync_give(text: str) -> None:
    assert outcome(streamed, text) == outcome(json.loads, text)
    assert outcome(streamed, text.encode("utf-8")) == outcome(json.loads, text.encode("utf-8"))


@settings(max_examples=300, deadline=None)
@given(documents(), st.data())
def test_a_damaged_document_fails_or_parses_as_json_loads_says(text: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(text)))
    damaged = data.draw(
        st.sampled_from(
            [
                text[:cut],  # truncated
                text[:cut] + "," + text[cut:],  # a stray comma (e.g. a trailing one)
                text + "x",  # trailing data
                text[:cut] + text[cut + 1 :],  # a character lost
                "\ufeff" + text,  # a byte-order mark
            ]
        )
    )
    assert outcome(streamed, damaged) == outcome(json.loads, damaged)


@pytest.mark.parametrize(
    "text",
    [
        # Repeated keys: json.loads keeps the last value, and so must the reader.
        '{"messageType":"data-sync","data":{"eventType":"full","featureFlags":[],"featureFlags":[%s]}}',
        '{"messageType":"data-sync","data":{"eventType":"full","featureFlags":[%s]},"data":{"eventType":"patch"}}',
        '{"messageType":"data-sync","data":{"eventType":"full","featureFlags":[%s],"segments":[],"eventType":"patch"}}',
        # Lists where the reader descends into objects, objects where it reads lists.
        '{"messageType":"data-sync","data":[%s]}',
        '{"messageType":"data-sync","data":{"eventType":"full","featureFlags":{"a":[%s]}}}',
        '[{"messageType":"data-sync","data":{"eventType":"full","featureFlags":[%s]}}]',
        # Entities that are not objects, nested deeper than Python's recursion limit.
        '{"messageType":"data-sync","data":{"eventType":"full","featureFlags":[%s, ' + "[" * 100_000 + "]" * 100_000 + "]}}",
    ],
)
def test_unusual_documents_are_read_whole(text: str) -> None:
    text = text % json.dumps(b.flag("f", updated_at=T0))
    assert outcome(streamed, text) == outcome(json.loads, text)


def test_parse_frame_reads_a_large_full_sync_entity_by_entity() -> None:
    flags = [b.flag(f"flag-{i:05d}", variations=[f"v{i}", "off"], variation_type="string", updated_at=T0) for i in range(3000)]
    text = json.dumps({"messageType": "data-sync", "data": b.data_sync(flags, [b.segment("s", included=["k"])])["data"]})
    assert len(text) > jsonstream.STREAM_AT  # the default threshold: streamed
    document = jsonstream.loads(text)
    assert isinstance(document["data"]["featureFlags"], Entities) and isinstance(document["data"]["segments"], Entities)
    frame = parse_frame(text)
    assert isinstance(frame, DataSyncMessage)
    assert outcome(lambda t: jsonstream.loads(t), text) == outcome(json.loads, text)

    def peak(loads: Callable[[str], Any]) -> int:
        tracemalloc.start()
        try:
            message = parse_envelope(loads(text))
            assert len(message.flags) == 3000
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # Whole, every flag is held as dicts and lists before the first is
    # packed; streamed, one at a time (at 100k flags: 692 -> 198 MiB RSS).
    whole, streaming = peak(json.loads), peak(jsonstream.loads)
    assert streaming < whole / 3, (streaming, whole)


def test_an_entity_list_handed_to_the_wrong_field_is_refused() -> None:
    with pytest.raises(WireError, match="must be lists"):
        parse_data_sync({"eventType": "full", "featureFlags": Entities(True)})


def test_an_entity_that_cannot_be_stored_is_skipped_and_the_frame_never_raises() -> None:
    # Review finding (older than the reader): valid JSON that cannot be
    # packed -- a lone surrogate (no UTF-8 for it), an integer no float
    # holds -- failed the whole message, and parse_frame raised.
    good = b.flag("good", updated_at=T0)
    split = b.flag("huge-rollout", fallthrough=b.split((0, 0, 0.5, 1), (1, 0.5, 1, 1)), updated_at=T0)
    cases = [dict(b.flag("bad", updated_at=T0), name="\ud800"), b.flag("k\ud800", updated_at=T0)]
    for bad in cases:
        text = json.dumps({"messageType": "data-sync", "data": b.data_sync([good, bad], [])["data"]})
        for stream_at in (0, jsonstream.STREAM_AT):
            frame = parse_frame(text) if stream_at else parse_envelope(jsonstream.loads(text, stream_at=0))
            assert isinstance(frame, DataSyncMessage), frame
            assert [p.key for p in frame.flags] == ["good"]  # type: ignore[union-attr]
            (skipped,) = frame.skipped
            assert "cannot be stored" in skipped.error and skipped.key.encode("utf-8")
    text = json.dumps({"messageType": "data-sync", "data": b.data_sync([good, split], [])["data"]})
    text = text.replace("0.5", "1" + "0" * 400, 1)
    assert outcome(streamed, text) == outcome(json.loads, text)
    frame = parse_frame(text)
    assert isinstance(frame, DataSyncMessage) and [p.key for p in frame.flags] == ["good"]  # type: ignore[union-attr]
    # The type and event type decide before any entity does, streamed or not.
    assert outcome(streamed, text.replace('"full"', '"bogus"')) == outcome(json.loads, text.replace('"full"', '"bogus"'))
    pong = json.dumps({"messageType": "pong", "data": json.loads(text)["data"]})
    assert type(parse_frame(pong)).__name__ == "Pong"
    with pytest.raises(TypeError):
        jsonstream.loads(memoryview(text.encode()))  # type: ignore[arg-type]  # as json.loads
