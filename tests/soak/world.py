"""The soak's flag world: 5,000 flags whose values name their own version.

Every variation value is ``"<flag key>@<version>#<index>"``, where version is
the flag's ``updatedAt`` in ms. So a served value says which published
version of which flag it came from, and :class:`History` -- the log of every
version the stand-in ever held -- can tell whether a worker served something
the server never published, or a version that its snapshot could not hold.

One thread mutates the world (patches, archives, segment changes, full
resyncs); versions are strictly increasing, so the stand-in's cursor rule
(R-8: strictly newer than the cursor) can never skip one.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from featbit_shm.testing import builders as b

COUNTRIES = ("us", "fr", "cn", "de", "br")
PLANS = ("free", "pro", "team")
SEGMENTS = 20
DEFAULT = "default"  # what the app passes as the default value

# The users /final evaluates every flag for (their digests prove convergence).
PROBE_USERS = (
    {"key": "probe-a", "name": "a", "country": "us", "plan": "pro"},
    {"key": "probe-b", "name": "b", "country": "fr", "plan": "free"},
    {"key": "probe-c", "name": "c", "country": "cn", "plan": "team"},
)


def flag_key(i: int) -> str:
    return f"f{i:04d}"


def segment_id(j: int) -> str:
    return f"seg-{j:02d}"


def value_of(key: str, version: int, index: int) -> str:
    return f"{key}@{version}#{index}"


def parse_value(value: Any) -> tuple[str, int, int] | None:
    """(key, version, index) of a served value, or None if it is not one of ours."""
    if not isinstance(value, str) or "@" not in value or "#" not in value:
        return None
    key, _, rest = value.partition("@")
    version, _, index = rest.partition("#")
    if not version.isdigit() or not index.isdigit():
        return None
    return key, int(version), int(index)


def make_flag(rng: random.Random, i: int, version: int, *, archived: bool = False) -> dict[str, Any]:
    """One wire flag at ``version``: string variations naming the version,
    rules on attributes and segments, a percentage rollout."""
    key = flag_key(i)
    n = rng.choice((2, 3, 3, 4))
    variations = [value_of(key, version, k) for k in range(n)]
    rules = []
    shape = rng.random()
    if shape < 0.35:
        rules.append(b.rule([b.in_segment(segment_id(rng.randrange(SEGMENTS)))], b.serve(rng.randrange(n)), name="seg"))
    if shape > 0.25:
        rules.append(b.rule([b.cond("country", "Equal", rng.choice(COUNTRIES))], b.serve(rng.randrange(n)), name="country"))
    if rng.random() < 0.3:
        rules.append(b.rule([b.cond("plan", "IsOneOf", rng.sample(PLANS, 2))], b.serve(rng.randrange(n)), name="plan"))
    cut = round(rng.random(), 2)
    fallthrough = b.split((0, 0.0, cut, 1.0), (n - 1, cut, 1.0, 1.0)) if 0 < cut < 1 else b.serve(rng.randrange(n))
    return b.flag(
        key,
        variations=variations,
        variation_type="string",
        enabled=rng.random() > 0.1,
        off=rng.randrange(n),
        rules=rules,
        fallthrough=fallthrough,
        updated_at=version,
        archived=archived,
    )


def make_segment(rng: random.Random, j: int, version: int) -> dict[str, Any]:
    probes = [u["key"] for u in PROBE_USERS]
    return b.segment(
        segment_id(j),
        included=rng.sample(probes, rng.randrange(len(probes) + 1)),
        rules=[[b.cond("plan", "IsOneOf", rng.sample(PLANS, rng.randrange(1, 3)))], [b.cond("country", "Equal", rng.choice(COUNTRIES))]],
        updated_at=version,
    )


@dataclass
class History:
    """Every version of every flag the server ever held: key -> sorted
    [(version, archived, values)]. Written by the one mutating thread,
    read by the checker after the run (or under the lock)."""

    versions: dict[str, list[tuple[int, bool, frozenset[str]]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, flag: Mapping[str, Any]) -> None:
        entry = (b_version(flag), bool(flag["isArchived"]), frozenset(v["value"] for v in flag["variations"]))
        with self.lock:
            self.versions.setdefault(flag["key"], []).append(entry)

    def published(self, key: str, value: str) -> bool:
        """Was this value ever published for this flag?"""
        return any(value in values for _v, _a, values in self.versions.get(key, ()))

    def acceptable(self, key: str, low: int, high: int) -> list[tuple[int, bool, frozenset[str]]]:
        """The versions of ``key`` a snapshot with data version in [low, high]
        may hold: the one in force at ``low``, and any published after it up
        to ``high`` (an evaluation can run on a snapshot taken a moment later)."""
        entries = self.versions.get(key, [])
        stamps = [e[0] for e in entries]
        first = max(bisect.bisect_right(stamps, low) - 1, 0)
        last = bisect.bisect_right(stamps, high)
        return entries[first:last]


def b_version(flag: Mapping[str, Any]) -> int:
    from featbit_shm._core.wire import parse_version

    return int(parse_version(flag["updatedAt"]))


class World:
    """The server-side truth and the one thread that changes it."""

    def __init__(self, seed: int, flags: int, base_ms: int) -> None:
        self.rng = random.Random(seed)
        self.n = flags
        self.clock = base_ms
        self.history = History()
        self.flags: dict[str, dict[str, Any]] = {}
        self.segments: dict[str, dict[str, Any]] = {}
        for i in range(flags):
            self._set_flag(make_flag(self.rng, i, self.next_version()))
        for j in range(SEGMENTS):
            self.segments[segment_id(j)] = make_segment(self.rng, j, self.next_version())
        self.counts = {"patches": 0, "archives": 0, "restores": 0, "segment_changes": 0, "full_resyncs": 0, "full_resync_changed_flags": 0}

    def next_version(self, now_ms: int | None = None) -> int:
        """Strictly increasing; follows the wall clock when it is ahead."""
        self.clock = max(self.clock + 1, now_ms or 0)
        return self.clock

    def _set_flag(self, flag: dict[str, Any]) -> dict[str, Any]:
        self.history.record(flag)
        self.flags[flag["key"]] = flag
        return flag

    def patch(self, now_ms: int) -> dict[str, Any]:
        """A new version of a random flag (sometimes archived or restored)."""
        i = self.rng.randrange(self.n)
        old = self.flags[flag_key(i)]
        roll = self.rng.random()
        if old["isArchived"]:
            archived = roll < 0.5  # restore half the time
            self.counts["restores" if not archived else "patches"] += 1
        else:
            archived = roll < 0.04
            self.counts["archives" if archived else "patches"] += 1
        return self._set_flag(make_flag(self.rng, i, self.next_version(now_ms), archived=archived))

    def segment_change(self, now_ms: int) -> dict[str, Any]:
        j = self.rng.randrange(SEGMENTS)
        seg = self.segments[segment_id(j)] = make_segment(self.rng, j, self.next_version(now_ms))
        self.counts["segment_changes"] += 1
        return seg

    def full_resync(self, now_ms: int) -> None:
        """Change a batch of flags at once; the caller pushes everything as a full."""
        changed = self.rng.randrange(1, 200)
        for i in self.rng.sample(range(self.n), changed):
            self._set_flag(make_flag(self.rng, i, self.next_version(now_ms), archived=self.flags[flag_key(i)]["isArchived"]))
        self.counts["full_resyncs"] += 1
        self.counts["full_resync_changed_flags"] += changed

    @property
    def version(self) -> int:
        """The server's data version: max updatedAt over everything (R-7)."""
        return self.clock

    def document(self) -> dict[str, Any]:
        return b.data_sync(list(self.flags.values()), list(self.segments.values()))


def digest(values: Iterable[tuple[str, Any]]) -> str:
    """What /final returns for a probe user: a hash of (key, value) by key."""
    h = hashlib.sha256()
    for key, value in sorted(values):
        h.update(json.dumps([key, value]).encode())
    return h.hexdigest()[:16]
