"""Decision order, segments, experiments and malformed data: R-36..R-39, R-45..R-47, R-54..R-56."""

from __future__ import annotations

from typing import Any

import pytest

from featbit_shm import ReasonKind
from featbit_shm._core.dataset import DataSet
from featbit_shm._core.evaluator import evaluate, send_to_experiment
from featbit_shm._core.model import Flag, Segment
from featbit_shm._core.user import make_user
from featbit_shm._core.wire import normalize_flag, normalize_segment
from featbit_shm.testing import builders as b


def decide(raw_flag: dict[str, Any], user: dict[str, Any], segments: list[dict[str, Any]] = ()) -> tuple:  # type: ignore[assignment]
    segs = {s.id: s for s in (Segment(normalize_segment(x)) for x in segments)}
    return evaluate(Flag(normalize_flag(raw_flag)), make_user(user), segs.get)


def outcome(raw_flag: dict[str, Any], user: dict[str, Any], segments: list[dict[str, Any]] = ()) -> tuple[ReasonKind, str | None]:  # type: ignore[assignment]
    kind, var, *_ = decide(raw_flag, user, segments)
    return kind, (var.value if var is not None else None)


U = {"key": "u1", "name": "Ann", "country": "us"}
STR = {"variations": ["a", "b", "c"], "variation_type": "string"}


def test_r36_off_serves_disabled_variation() -> None:
    f = b.flag("f", enabled=False, off=2, targets={0: ["u1"]}, **STR)
    assert outcome(f, U) == (ReasonKind.OFF, "c")


def test_r36_first_target_in_stored_order_wins_before_rules() -> None:
    f = b.flag("f", targets={1: ["u1"], 2: ["u1"]}, rules=[b.rule([], b.serve(0))], **STR)
    assert outcome(f, U) == (ReasonKind.TARGET_MATCH, "b")


def test_r36_first_matching_rule_wins() -> None:
    f = b.flag(
        "f",
        rules=[
            b.rule([b.cond("country", "Equal", "fr")], b.serve(0), name="fr"),
            b.rule([b.cond("country", "Equal", "us")], b.serve(1), name="us"),
            b.rule([], b.serve(2), name="everyone"),
        ],
        fallthrough=b.serve(0),
        **STR,
    )
    kind, var, reason, rule_name, _ = decide(f, U)
    assert (kind, var.value, rule_name) == (ReasonKind.RULE_MATCH, "b", "us")


def test_r38_conditions_are_anded() -> None:
    f = b.flag(
        "f",
        rules=[b.rule([b.cond("country", "Equal", "us"), b.cond("name", "Equal", "Bob")], b.serve(1))],
        fallthrough=b.serve(2),
        **STR,
    )
    assert outcome(f, U) == (ReasonKind.FALLTHROUGH, "c")
    assert outcome(f, {**U, "name": "Bob"}) == (ReasonKind.RULE_MATCH, "b")


def test_r37_dangling_variation_ids_are_malformed_flag() -> None:
    off = b.flag("f", enabled=False, off=7)
    target = b.flag("f", targets={9: ["u1"]})
    rule = b.flag("f", rules=[b.rule([], b.serve(9))])
    fall = b.flag("f", fallthrough=b.serve(9))
    for f in (off, target, rule, fall):
        kind, var, reason, *_ = decide(f, U)
        assert kind is ReasonKind.ERROR and var is None and "malformed" in reason


def test_r37_rule_with_no_matching_rollout_does_not_fall_through() -> None:
    # G-4: fbclient silently falls through to later rules / the fallthrough.
    f = b.flag("f", rules=[b.rule([], b.split((0, 0, 0, 1)))], fallthrough=b.serve(1))
    assert outcome(f, U)[0] is ReasonKind.ERROR


def test_r42_bad_regex_only_errors_when_reached() -> None:
    f = b.flag(
        "f",
        rules=[
            b.rule([b.cond("country", "Equal", "fr")], b.serve(0)),
            b.rule([b.cond("name", "MatchRegex", "([")], b.serve(0)),
        ],
        targets={0: ["vip"]},
        fallthrough=b.serve(1),
    )
    assert outcome(f, U)[0] is ReasonKind.ERROR
    assert outcome(f, {**U, "key": "vip"})[0] is ReasonKind.TARGET_MATCH
    assert outcome(f, {**U, "country": "fr"})[0] is ReasonKind.RULE_MATCH


# --- segments (R-45..R-47)

SEG = b.segment("seg-1", included=["in-user"], excluded=["out-user"], rules=[[b.cond("major", "IsOneOf", ["cs", "math"])]])


def seg_flag(cond: dict[str, Any]) -> dict[str, Any]:
    return b.flag("f", rules=[b.rule([cond], b.serve(0))], fallthrough=b.serve(1))


@pytest.mark.parametrize(
    ("user", "in_expected"),
    [
        ({"key": "in-user"}, True),
        ({"key": "out-user", "major": "cs"}, False),  # exclusion wins over a matching rule
        ({"key": "other", "major": "math"}, True),
        ({"key": "other", "major": "art"}, False),
        ({"key": "other"}, False),
    ],
)
def test_r46_segment_membership(user: dict[str, Any], in_expected: bool) -> None:
    assert (outcome(seg_flag(b.in_segment("seg-1")), user, [SEG])[0] is ReasonKind.RULE_MATCH) is in_expected
    assert (outcome(seg_flag(b.not_in_segment("seg-1")), user, [SEG])[0] is ReasonKind.RULE_MATCH) is not in_expected


def test_r45_op_is_ignored_for_segment_conditions() -> None:
    cond = b.in_segment("seg-1")
    cond["op"] = "Equal"
    assert outcome(seg_flag(cond), {"key": "in-user"}, [SEG])[0] is ReasonKind.RULE_MATCH


def test_r45_any_of_several_segments() -> None:
    other = b.segment("seg-2", included=["u9"])
    assert outcome(seg_flag(b.in_segment("seg-1", "seg-2")), {"key": "u9"}, [SEG, other])[0] is ReasonKind.RULE_MATCH
    assert outcome(seg_flag(b.not_in_segment("seg-1", "seg-2")), {"key": "u9"}, [SEG, other])[0] is ReasonKind.FALLTHROUGH


def test_r45_empty_segment_list() -> None:
    assert outcome(seg_flag(b.in_segment()), {"key": "u"}, [])[0] is ReasonKind.FALLTHROUGH
    assert outcome(seg_flag(b.not_in_segment()), {"key": "u"}, [])[0] is ReasonKind.RULE_MATCH


@pytest.mark.parametrize("cond", [b.in_segment("missing"), b.not_in_segment("missing")])
def test_r47_missing_segment_is_a_contained_error_never_a_negative(cond: dict[str, Any]) -> None:
    # G-7: fbclient makes "User is not in segment" true for a missing segment.
    kind, var, reason, *_ = decide(seg_flag(cond), {"key": "u"}, [])
    assert kind is ReasonKind.ERROR and var is None and "segment missing" in reason


def test_r47_archived_segment_is_a_contained_error() -> None:
    ds, _ = DataSet().apply(
        __import__("featbit_shm._core.wire", fromlist=["x"]).parse_data_sync(
            b.data_sync([], [b.segment("seg-1", archived=True)])["data"]
        )
    )
    assert ds.segment("seg-1") is None
    kind, *_ = decide(seg_flag(b.not_in_segment("seg-1")), {"key": "u"}, [])
    assert kind is ReasonKind.ERROR


def test_r46_segment_rules_never_reference_segments() -> None:
    nested = b.segment("outer", rules=[[b.in_segment("seg-1")]])
    assert outcome(seg_flag(b.in_segment("outer")), {"key": "in-user"}, [SEG, nested])[0] is ReasonKind.FALLTHROUGH


# --- rollout dispatch (R-48, R-49, R-53)


def test_r53_split_by_name_fixture_values() -> None:
    f = b.flag("ff-test-bool", fallthrough=b.split((0, 0, 0.5, 1), (1, 0.5, 1, 1)), fallthrough_dispatch_key="name")
    assert outcome(f, {"key": "x", "name": "test-user-3"}) == (ReasonKind.FALLTHROUGH, "false")
    assert outcome(f, {"key": "x", "name": "test-user-4"}) == (ReasonKind.FALLTHROUGH, "true")


@pytest.mark.parametrize("dispatch_key", [None, "", "   ", "keyId"])
def test_r48_null_blank_or_keyid_dispatch_uses_user_key(dispatch_key: str | None) -> None:
    # bucket("ff-test-booltest-user-3") = 0.645 -> second half
    f = b.flag("ff-test-bool", fallthrough=b.split((0, 0, 0.5, 1), (1, 0.5, 1, 1)), fallthrough_dispatch_key=dispatch_key)
    assert outcome(f, {"key": "test-user-3", "name": "test-user-4"})[1] == "false"


def test_r48_absent_dispatch_attribute_hashes_empty_string_not_the_key() -> None:
    # bucket("f") decides for everyone who lacks the attribute.
    f = b.flag("f", fallthrough=b.split((0, 0, 0.5, 1), (1, 0.5, 1, 1)), fallthrough_dispatch_key="team")
    values = {outcome(f, {"key": f"user-{i}"})[1] for i in range(50)}
    assert len(values) == 1


# --- experiments (R-54..R-56)


def expt(raw_flag: dict[str, Any], user: dict[str, Any]) -> bool:
    return send_to_experiment(decide(raw_flag, user).experiment, raw_flag["key"], make_user(user))


def test_r56_experiment_vectors() -> None:
    user = {"key": "x", "name": "test-user-4"}
    for expt_rollout, expected in ((1, True), (0.1, True), (0.05, False)):
        f = b.flag(
            "ff-test-bool",
            fallthrough=b.split((0, 0, 0.5, expt_rollout), (1, 0.5, 1, expt_rollout)),
            fallthrough_dispatch_key="name",
        )
        assert expt(f, user) is expected, expt_rollout


def test_r54_off_is_never_in_experiment() -> None:
    assert expt(b.flag("f", enabled=False, expt_include_all_targets=True), U) is False


def test_r54_target_follows_include_all_targets() -> None:
    assert expt(b.flag("f", targets={0: ["u1"]}, expt_include_all_targets=True), U) is True
    assert expt(b.flag("f", targets={0: ["u1"]}, expt_include_all_targets=False), U) is False


def test_r54_uses_the_matched_rules_own_included_in_expt() -> None:
    f = b.flag("f", rules=[b.rule([], b.serve(0), included_in_expt=False)], fallthrough_in_expt=True)
    assert expt(f, U) is False
    f = b.flag("f", rules=[b.rule([], b.serve(0), included_in_expt=True)], fallthrough_in_expt=False)
    assert expt(f, U) is True
    f = b.flag("f", rules=[b.rule([], b.serve(0), included_in_expt=False)], expt_include_all_targets=True)
    assert expt(f, U) is True


def test_r55_zero_expt_rollout_is_false() -> None:
    assert expt(b.flag("f", fallthrough=[(0, 0, 1, 0)]), U) is False
