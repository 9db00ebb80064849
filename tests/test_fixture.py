"""R-93: expected outcomes for the shared Python/Go fixture, through the public client."""

from __future__ import annotations

from typing import Any

import pytest

from featbit_shm import Config, FBClient, ReasonKind

from .conftest import FIXTURES


@pytest.fixture(scope="module")
def client() -> FBClient:
    return FBClient(Config(offline=True, bootstrap_file=FIXTURES / "fbclient_test_data.json"))


def user(key: str, **attrs: Any) -> dict[str, Any]:
    return {"key": key, "name": key, **attrs}


R93 = [
    ("ff-test-bool", user("test-user-1"), True, ReasonKind.TARGET_MATCH),
    ("ff-test-bool", user("test-user-2"), True, ReasonKind.TARGET_MATCH),
    ("ff-test-bool", user("test-user-3"), False, ReasonKind.FALLTHROUGH),
    ("ff-test-bool", user("test-user-4"), True, ReasonKind.FALLTHROUGH),
    ("ff-test-number", user("test-user-1", country="us"), 1, ReasonKind.RULE_MATCH),
    ("ff-test-number", user("test-user-1", country="fr"), 33, ReasonKind.RULE_MATCH),
    ("ff-test-number", user("test-user-1", country="cn"), 86, ReasonKind.RULE_MATCH),
    ("ff-test-number", user("test-user-1", country="uk"), 9999, ReasonKind.FALLTHROUGH),
    ("ff-test-string", user("18555358000"), "phone number", ReasonKind.RULE_MATCH),
    ("ff-test-string", user("0603111111"), "phone number", ReasonKind.RULE_MATCH),
    ("ff-test-string", user("test-user-7@featbit.com"), "email", ReasonKind.RULE_MATCH),
    ("ff-test-string", user("test-user-1"), "others", ReasonKind.FALLTHROUGH),
    ("ff-test-seg", user("test-user-1"), "teamA", ReasonKind.RULE_MATCH),
    ("ff-test-seg", user("test-user-2"), "teamB", ReasonKind.FALLTHROUGH),
    ("ff-test-seg", user("test-user-3", major="cs"), "teamA", ReasonKind.RULE_MATCH),
    ("ff-test-seg", user("test-user-4", major="physics"), "teamB", ReasonKind.FALLTHROUGH),
    ("ff-test-json", user("test-user-1"), {"code": 200, "reason": "you win 100 euros"}, ReasonKind.FALLTHROUGH),
    ("ff-test-json", user("test-user-2"), {"code": 404, "reason": "fail to win the lottery"}, ReasonKind.FALLTHROUGH),
    ("ff-test-off", user("test-user-1"), False, ReasonKind.OFF),
    ("ff-evaluation-test", user("test-target-user"), "teamB", ReasonKind.TARGET_MATCH),
    ("ff-evaluation-test", user("u", graduated="true"), "teamC", ReasonKind.RULE_MATCH),
    ("ff-evaluation-test", user("u", country="CHN"), "teamD", ReasonKind.RULE_MATCH),
    ("ff-evaluation-test", user("u", salary="2500"), "teamE", ReasonKind.RULE_MATCH),
    ("ff-evaluation-test", user("u", email="someone@gmail.com"), "teamF", ReasonKind.RULE_MATCH),
    ("ff-evaluation-test", user("u", major="CS"), "teamG", ReasonKind.RULE_MATCH),
    ("ff-evaluation-test", user("group-admin-user"), "teamH", ReasonKind.RULE_MATCH),
    ("ff-evaluation-test", user("u", phone="18555358000"), "teamI", ReasonKind.RULE_MATCH),
    ("ff-evaluation-test", user("anyone-else"), "teamA", ReasonKind.FALLTHROUGH),
]


@pytest.mark.parametrize(("flag", "u", "value", "kind"), R93, ids=[f"{r[0]}-{r[1]['key']}" for r in R93])
def test_r93_fixture_outcomes(client: FBClient, flag: str, u: dict[str, Any], value: Any, kind: ReasonKind) -> None:
    detail = client.variation_detail(flag, u, "DEFAULT")
    assert (detail.variation, detail.kind) == (value, kind)
    assert detail.variation_id
    assert client.variation(flag, u, "DEFAULT") == value


def test_r93_versions_and_cursor(client: FBClient) -> None:
    ds = client._source.dataset
    assert ds.flag("ff-test-bool")["version"] == 1674115494326
    assert ds.version == 1674119927629
