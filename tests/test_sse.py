"""The SSE parser: exact events, every line ending, and invariance under any split of the bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mux.sse import SSEEvent, SSEParser, frame


def parse_all(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events + parser.close()


STREAM = (
    b": comment line\n"
    b'event: message_start\ndata: {"a":1}\n\n'
    b"data: line one\r\ndata: line two\r\n\r\n"
    b"id: 7\rretry: 1500\rdata: cr only\r\r"
    b"data:no-space\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent(data=b'{"a":1}', event="message_start"),
    SSEEvent(data=b"line one\nline two"),
    SSEEvent(data=b"cr only", id="7", retry=1500),
    SSEEvent(data=b"no-space", id="7", retry=1500),
    SSEEvent(data=b"[DONE]", id="7", retry=1500),
]


def test_whole_stream_parses_to_the_expected_events():
    assert parse_all([STREAM]) == EXPECTED


def test_event_without_its_blank_line_at_the_end_is_dropped():
    assert parse_all([b"data: a\n\ndata: unfinished"]) == [SSEEvent(data=b"a")]


def test_blank_lines_without_data_dispatch_nothing():
    assert parse_all([b"\n\n\r\n: x\n\nevent: e\n\n"]) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_the_bytes_yields_the_same_events(cuts):
    points = sorted(set(cuts))
    chunks, start = [], 0
    for point in points + [len(STREAM)]:
        chunks.append(STREAM[start:point])
        start = point
    assert parse_all(chunks) == EXPECTED


payloads = st.lists(
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b), min_size=1, max_size=8
)


@settings(max_examples=200, deadline=None)
@given(payloads, st.data())
def test_framed_payloads_round_trip_under_any_split(items, data):
    stream = b"".join(frame(p) for p in items)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=10))))
    chunks, start = [], 0
    for point in cuts + [len(stream)]:
        chunks.append(stream[start:point])
        start = point
    assert [e.data for e in parse_all(chunks)] == items


def test_parsing_a_long_line_fed_byte_by_byte_is_linear():
    parser = SSEParser()
    parser.feed(b"data: ")
    for _ in range(100_000):
        assert parser.feed(b"x") == []
    (event,) = parser.feed(b"\n\n")
    assert len(event.data) == 100_000
