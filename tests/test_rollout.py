"""Rollout bucketing and intervals: R-48..R-53, with G-4's bugs pinned as fixed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from featbit_shm._core.rollout import bucket, experiment_upper, in_rollout

# (input, bucket) vectors.
R51 = [
    ("test-value", 0.14653629204258323),
    ("qKPKh1S3FolC", 0.9105919692665339),
    ("3eacb184-2d79-49df-9ea7-edd4f10e4c6f", 0.08994403155520558),
    ("ff-test-booltest-user-3", 0.645237626042217),
    ("ff-test-booltest-user-4", 0.1994927953928709),
    ("ff-test-jsontest-user-1", 0.11303814221173525),
    ("ff-test-jsontest-user-2", 0.9716241317801178),
    ("exptff-test-booltest-user-4", 0.130469202529639),
    ("hellou1", 0.24027392361313105),
    ("expthellou1", 0.6712682144716382),
    ("héllo-wörld", 0.49117477191612124),
    ("用户-1", 0.28269682405516505),
    ("", 0.3004114832729101),
]


@pytest.mark.parametrize(("text", "expected"), R51)
def test_r51_bucket_vectors(text: str, expected: float) -> None:
    assert bucket(text) == expected


def test_r52_whole_range_shortcut_includes_near_one() -> None:
    # G-4: fbclient needs exactly [0, 1]; the contract allows 1 - hi < 0.00001.
    assert in_rollout("anything", 0, 1) is True
    assert in_rollout("qKPKh1S3FolC", 0, 0.999995) is True  # bucket 0.91 would pass anyway
    assert in_rollout("ff-test-jsontest-user-2", 0, 0.999991) is True  # 0.97 < hi too
    # bucket 0.9999... cannot be forced, so pin the rule itself:
    assert in_rollout("x", 0.0, 1 - 0.000009) is True


def test_r52_zero_width_at_zero_takes_nobody() -> None:
    assert in_rollout("", 0, 0) is False


def test_r52_both_bounds_inclusive() -> None:
    b = bucket("test-value")
    assert in_rollout("test-value", b, 0.5) is True  # lower bound exactly
    assert in_rollout("test-value", 0.1, b) is True  # upper bound exactly (G-4: fbclient excludes it)
    assert in_rollout("test-value", b + 1e-12, 0.5) is False


def test_r53_fixture_split_by_name() -> None:
    assert in_rollout("ff-test-booltest-user-3", 0.5, 1) is True
    assert in_rollout("ff-test-booltest-user-3", 0, 0.5) is False
    assert in_rollout("ff-test-booltest-user-4", 0, 0.5) is True


def test_r55_experiment_upper_bound() -> None:
    assert experiment_upper(0, 0.5, 1) == 1.0
    assert experiment_upper(0, 0.5, 0.1) == pytest.approx(0.2)
    assert experiment_upper(0, 0.5, 0.05) == pytest.approx(0.1)
    assert experiment_upper(0.3, 0.3, 1) is None  # zero width
    assert experiment_upper(0, 1, 0) is None  # exptRollout 0


@given(st.text(max_size=64))
def test_bucket_is_deterministic_and_in_unit_interval(text: str) -> None:
    value = bucket(text)
    assert 0.0 <= value <= 1.0
    assert bucket(text) == value


@given(st.text(max_size=32), st.floats(0, 1), st.floats(0, 1))
def test_in_rollout_obeys_boundary_rules(text: str, a: float, c: float) -> None:
    lo, hi = min(a, c), max(a, c)
    got = in_rollout(text, lo, hi)
    if lo == 0 and 1 - hi < 0.00001:
        assert got is True
    elif lo == 0 and hi == 0:
        assert got is False
    else:
        assert got is (lo <= bucket(text) <= hi)


@given(st.text(max_size=32), st.lists(st.floats(0, 1), min_size=1, max_size=6))
def test_adjacent_ranges_partition_unit_interval(text: str, cuts: list[float]) -> None:
    """Consecutive ranges [c0,c1],[c1,c2].. covering [0,1]: exactly the first
    range containing the bucket wins, and some range always does."""
    points = [0.0, *sorted(cuts), 1.0]
    winners = [i for i in range(len(points) - 1) if in_rollout(text, points[i], points[i + 1])]
    assert winners, "a user must always land in one of the ranges"
