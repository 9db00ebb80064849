"""Read a data-sync document without ever holding all of it parsed.

``json.loads`` of FeatBit's full data-sync message builds every flag and
segment as Python dicts and lists before the first is packed: at 100,000
flags about 560 MiB on top of the 98 MiB of text, for a moment, at every
full sync (a start, a reconnect). :func:`loads` returns what ``json.loads``
returns, except that the entity lists -- ``featureFlags`` and ``segments``
of the document or of its ``data`` object -- come back as
:class:`~.wire.Entities`: each entity was parsed, normalised and packed in
turn, and its parsed form dropped before the next was read. The peak is then
the text, the packed entities and one parsed entity.

Only documents of the usual shape are read this way: an object, with the
lists where FeatBit puts them (of a repeated key, the last value wins, as in
``json.loads``). Anything else -- a list where an object was expected,
trailing data, invalid JSON, any error at all -- is handed to ``json.loads``
whole, so the result, or the error, is what ``json.loads`` and
:func:`~.wire.parse_data_sync` give (tests/test_jsonstream.py checks this on
generated and damaged documents). Small documents go to ``json.loads``
directly. Two costs of that: a large document found invalid near its end is
parsed twice; and each entity is parsed on its own, so one nested deeper
than ``json.loads`` can take whole (a Python-version-dependent limit, over a
thousand levels) may still be read.

Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from .wire import Entities

STREAM_AT: Final = 256 * 1024  # characters; below this json.loads is as good and simpler

# Where entity lists are read one entity at a time (True: segments), and
# where the reader descends into an object: the document itself, a polled
# body without an envelope, and the envelope's ``data``.
_LISTS: Final = {
    ("featureFlags",): False,
    ("segments",): True,
    ("data", "featureFlags"): False,
    ("data", "segments"): True,
}
_OBJECTS: Final = {("data",)}

_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, as json.decoder skips it
_DECODER = json.JSONDecoder()  # json.loads's own settings


class _Unusual(Exception):
    """The document is not of the usual shape: parse it whole."""


def loads(text: str | bytes | bytearray, *, stream_at: int = STREAM_AT) -> Any:
    """``json.loads(text)``, with the entity lists of a data-sync document
    packed as they are read (module docstring). Raises what ``json.loads``
    raises (ValueError, RecursionError)."""
    if isinstance(text, (bytes, bytearray)):
        # What json.loads does with bytes (UTF-8, -16 or -32, detected).
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    elif not isinstance(text, str):
        return json.loads(text)  # its TypeError
    start = _skip(text, 0)
    if len(text) < stream_at or text[start : start + 1] != "{":
        return json.loads(text)
    document: dict[str, Any] | None = None
    try:
        document, end = _object(text, start, ())
        if _skip(text, end) == len(text):
            return document
    except Exception:  # noqa: BLE001 - anything at all: json.loads decides, and raises what it raises
        pass  # (out of the handler first: its traceback would keep the partial parse alive)
    document = None  # trailing data, or a partial parse: freed before the whole parse
    return json.loads(text)


def _skip(s: str, i: int) -> int:
    end: int = _WHITESPACE.match(s, i).end()  # type: ignore[union-attr]  # matches the empty string
    return end


def _object(s: str, i: int, path: tuple[str, ...]) -> tuple[dict[str, Any], int]:
    """The object whose ``{`` is at ``i``, and the index after its ``}``."""
    out: dict[str, Any] = {}
    i = _skip(s, i + 1)
    if s[i : i + 1] == "}":
        return out, i + 1
    while True:
        if s[i : i + 1] != '"':
            raise _Unusual
        key, i = _DECODER.raw_decode(s, i)  # a string: it starts with a quote
        i = _skip(s, i)
        if s[i : i + 1] != ":":
            raise _Unusual
        i = _skip(s, i + 1)
        inner = (*path, key)  # a repeated key: the last value wins, as in json.loads
        if inner in _LISTS and s[i : i + 1] == "[":
            out[key], i = _entities(s, i, _LISTS[inner])
        elif inner in _OBJECTS and s[i : i + 1] == "{":
            out[key], i = _object(s, i, inner)
        else:
            out[key], i = _DECODER.raw_decode(s, i)
        i, closed = _after_item(s, i, "}")
        if closed:
            return out, i


def _entities(s: str, i: int, is_segment: bool) -> tuple[Entities, int]:
    """The list whose ``[`` is at ``i``, each entity packed as it is read."""
    entities = Entities(is_segment)
    i = _skip(s, i + 1)
    if s[i : i + 1] == "]":
        return entities, i + 1
    while True:
        raw, i = _DECODER.raw_decode(s, i)
        entities.add(raw)
        del raw
        i, closed = _after_item(s, i, "]")
        if closed:
            return entities, i


def _after_item(s: str, i: int, close: str) -> tuple[int, bool]:
    """After a member or an element: the index past ``close`` and True, or
    that of the next item and False."""
    i = _skip(s, i)
    c = s[i : i + 1]
    if c == close:
        return i + 1, True
    if c != ",":
        raise _Unusual
    return _skip(s, i + 1), False
