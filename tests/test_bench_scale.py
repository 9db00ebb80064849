"""benchmarks/bench_scale.py keeps working (issue 19, item 5).

The benchmark takes minutes, so a change that breaks one of its sections
would show only at the end of a long run. These tests run every section on
small sizes and check the report renders every target line, that the flags
translated for LaunchDarkly answer as featbit_shm does, and that a run
leaves no /dev/shm object behind. No figure is asserted: the speed targets
are judged by the benchmark itself (benchmarks/results/bench_scale.md).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_scale.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["bench_scale"]


def test_growth_names_the_shape_of_a_curve(bench: ModuleType) -> None:
    assert bench.growth([100, 10_000], [1.0, 1.5]).startswith("flat")
    assert bench.growth([100, 10_000], [1.0, 20.0]).startswith("sublinear")
    assert bench.growth([100, 10_000], [1.0, 100.0]).startswith("linear")
    assert bench.growth([100, 10_000], [1.0, 400.0]).startswith("worse than linear")
    assert bench.growth([100], [1.0]) == "n/a"


def test_single_call_timing_keeps_one_sample_per_call_within_its_bound(bench: ModuleType) -> None:
    calls: list[object] = []
    samples = bench.time_single(calls.append, ["u1", "u2"], 500, 60.0)
    assert len(samples) == len(calls) == 500
    assert calls[:3] == ["u1", "u2", "u1"]
    assert all(isinstance(ns, int) and ns >= 0 for ns in samples)
    summary = bench.single_summary(samples)
    assert summary["n"] == 500
    assert summary["p50_ns"] <= summary["p99_ns"] <= summary["p999_ns"] <= summary["max_ns"]


def test_launchdarkly_gets_flags_that_answer_as_featbit_shm_does(bench: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("ldclient")
    pytest.importorskip("fbclient")
    flags, segments = bench.eval_data()
    peers = bench.Peers(flags, segments, tmp_path)
    try:
        assert peers.ld is not None
        users = bench.eval_users(False) + bench.eval_users(True)
        contexts = bench.ld_contexts(users)
        for user, context in zip(users[::16], contexts[::16]):
            for key in ("bench-simple", *(f"rules-{n}" for n in bench.RULE_COUNTS)):
                expected = peers.ours.variation(key, user, None)
                assert expected is True  # the user matches the last rule of every rules-n flag
                assert peers.ld.variation(key, context, None) == expected, key
                assert peers.fb.variation(key, user, None) == expected, key
            # (b) walks the first four rules without a match; its last rule is a split,
            # bucketed differently by LaunchDarkly: any of the two variations
            assert peers.ld.variation("bench-complex", context, None) in (True, False)
        outsider = {"key": "outsider", "country": "jp", "plan": "free", "age": 20}
        from ldclient import Context

        for key in ("bench-complex", *(f"rules-{n}" for n in bench.RULE_COUNTS)):
            assert peers.ours.variation(key, outsider, None) is False  # the fallthrough
            assert peers.ld.variation(key, Context.from_dict({"kind": "user", **outsider}), None) is False, key
    finally:
        peers.close()
    assert list(tmp_path.iterdir()) == []  # the translated file is removed


@pytest.mark.subprocess
def test_a_small_run_measures_every_section_renders_every_target_and_leaves_nothing(bench: ModuleType) -> None:
    plan = bench.Plan(
        "(test)",
        segment_sizes=(10, 100, 1_000),
        wide=(1_000, 100),  # a worker request evaluates flags 500-519
        rounds=3,
        prop_rounds=(2, 2, 2),
        flag_sizes=(100, 1_000),
        publish_rounds=3,
        publish_seconds=1.0,
        flag_prop_rounds=2,
        max_calls=40,
        call_seconds=0.01,
        get_all_counts=(10, 100, 1_000),
        workers=2,
    )
    results = bench.measure(plan)
    text, targets = bench.render(results)
    for heading in ("## 1-2.", "## 3.", "## 4.", "## 5.", "## 6."):
        assert heading in text
    target_lines = [line for line in text.splitlines() if line.startswith("target ")]
    assert len(target_lines) == len(targets) == 17 + len(plan.flag_sizes)  # + one memory target per flag count
    assert all(line.endswith((": met", ": MISSED", "(--full measures it)")) for line in target_lines)
    assert targets["(2) first pass over 100k flags < 8 s"] is None  # not measured without 100k flags
    assert any(label.startswith("(4) get_all over 1k flags >= 8x") and ok is not None for label, ok in targets.items())
    rows = results["per_call"]["cases"]
    assert len(rows) == 12 and all("featbit_shm" in row and "fb-python-sdk" in row for row in rows.values())
    assert "/dev/shm objects left behind: 0." in text
    assert bench.leftovers() == []
