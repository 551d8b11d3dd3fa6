"""service/request.py: the /rank request's one declaration and every rule, without a model."""

from __future__ import annotations

import dataclasses
import json

import msgspec
import numpy as np
import pytest

from service import fusion, request
from service.errors import ClientError, MalformedJson

RULES = request.Rules(2000, fusion.FusionParams("product", 1.0, 1.0, 0.0), -4.0, 4.0, 1000)


def body(**over) -> dict:
    b = {
        "user_id": "u1",
        "user_features": {"101": 5, "109_14": {"ids": [1, 2], "weights": [3.0, 1.0]}},
        "candidates": [
            {"item_id": i, "features": {"205": i, "210": [1, 2]}, "price": 2.0} for i in range(3)
        ],
    }
    b.update(over)
    return b


def refused(b: dict | bytes) -> ClientError:
    raw = b if isinstance(b, bytes) else json.dumps(b).encode()
    with pytest.raises(ClientError) as e:
        request.decode(raw, RULES)
    return e.value


def test_a_valid_body_decodes_with_its_rules_resolved():
    r = request.decode(json.dumps(body(fusion={"c": 0.5}, timeout_ms=250)).encode(), RULES)
    assert r.rows == 3 and r.timeout_s == 0.25
    assert r.fusion == fusion.FusionParams("product", 1.0, 1.0, 0.5)
    assert r.price.tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "where, value, field",
    [
        # numbers valid in float64 that overflow float32 or the arithmetic they feed
        ("weight", 1e39, "user_features.109_14.weights[1]"),
        ("weight", 1e7, "user_features.109_14.weights[1]"),
        ("weight", 0.0, "user_features.109_14.weights[1]"),  # a mean pool divides by the sum
        ("weight", -1.0, "user_features.109_14.weights[1]"),
        ("price", 1e308, "candidates[1].price"),
        ("price", -1.0, "candidates[1].price"),
        ("exponent", 1e3, "fusion.c"),
        ("exponent", 5.0, "fusion.c"),  # within [-8, 8] but outside the configured [-4, 4]
        # accepted on input, unwritable on output
        ("item_id", 2**70, "candidates[1].item_id"),
        ("item_id", -(2**64), "candidates[1].item_id"),
        ("item_id", "x" * 257, "candidates[1].item_id"),
        ("item_id", "", "candidates[1].item_id"),
        ("user_id", "u" * 1_000_000, "user_id"),  # megabyte ids would sit in the cache
        ("id", 2**63, "candidates[1].features.205"),
        ("top_k", 2**64, "top_k"),
    ],
)
def test_numbers_and_ids_are_checked_for_what_they_feed(where, value, field):
    b = body(fusion={"c": 1.0})
    if where == "weight":
        b["user_features"]["109_14"]["weights"][1] = value
    elif where == "price":
        b["candidates"][1]["price"] = value
    elif where == "exponent":
        b["fusion"]["c"] = value
    elif where == "item_id":
        b["candidates"][1]["item_id"] = value
    elif where == "user_id":
        b["user_id"] = value
    elif where == "id":
        key = "205" if value > 0 else "210"
        b["candidates"][1]["features"][key] = value if value > 0 else [value]
    elif where == "top_k":
        b["top_k"] = value
    e = refused(b)
    assert e.status == 422 and e.field == field, e.message
    assert e.message.startswith(field)


def test_the_extremes_that_are_accepted_are_writable_back():
    b = body(fusion={"a": -4.0, "b": 4.0, "c": 4.0})
    b["candidates"][0].update(item_id=2**63 - 1, price=1e9)
    b["candidates"][1].update(item_id=-(2**63), price=0.0)
    b["candidates"][2]["item_id"] = "é" * 256
    b["user_features"]["109_14"]["weights"] = [1e6, 1e-30]
    r = request.decode(json.dumps(b).encode(), RULES)
    assert msgspec.json.decode(msgspec.json.encode([c.item_id for c in r.req.candidates])) == [
        2**63 - 1,
        -(2**63),
        "é" * 256,
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"user_id": "\xff\xfe", "user_features": {}, "candidates": []}',  # invalid UTF-8
        b'{"user_id": "\\ud800", "user_features": {}, "candidates": []}',  # lone surrogate
        b'{"user_id": "u", "user_features": {}, "candidates": [',
        b"",
        b"\x00",
    ],
)
def test_bytes_that_are_not_json_text_are_malformed_json(raw):
    assert isinstance(refused(raw), MalformedJson)


def test_the_candidate_cap_is_checked_before_the_candidates_are_decoded(monkeypatch):
    """60,000 candidates, the last one invalid: the answer is the cap, not the invalid one, and
    the full decoder never runs (a spy on it; a timing would belong in a benchmark)."""
    decoded = []
    real = request._decoder

    class Spy:
        def decode(self, raw):
            decoded.append(len(raw))
            return real.decode(raw)

    monkeypatch.setattr(request, "_decoder", Spy())
    many = body(candidates=[{"item_id": i, "features": {"210": [1, 2, 3]}} for i in range(60_000)])
    many["candidates"][-1]["item_id"] = 1.5
    e = refused(json.dumps(many).encode())
    assert e.field == "candidates" and "60000 candidates; at most 2000" in e.message
    assert decoded == []  # cheaper than decoding them: they never were


def test_errors_name_the_feature_key_msgspec_hides():
    b = body()
    b["candidates"][2]["features"]["206"] = {"ids": [1, 2], "weights": [1.0]}
    e = refused(b)
    assert e.field == "candidates[2].features.206" and "2 ids but 1 weights" in e.message
    b = body()
    b["user_features"]["x" * 65] = 1  # a name is at most 64 characters (a spec's)
    assert refused(b).field.startswith("user_features")


def test_price_is_required_only_when_the_fusion_uses_it():
    """A price left out may come from the item table: the rule is checked after it was asked."""
    b = body(fusion={"c": 0.5})
    del b["candidates"][2]["price"]
    r = request.decode(json.dumps(b).encode(), RULES)
    assert np.isnan(r.price[2]) and r.price[0] == 2.0
    with pytest.raises(ClientError) as e:
        r.prices()
    assert e.value.field == "candidates[2].price"
    assert r.prices(np.array([0.0, 0.0, 4.5]))[2] == 4.5  # the table's price fills it
    b["fusion"] = {"c": 0.0}
    assert request.decode(json.dumps(b).encode(), RULES).prices() is None


def test_candidates_come_as_candidates_or_as_item_ids():
    by_ids = {k: v for k, v in body().items() if k != "candidates"} | {"item_ids": [1, 2, 3]}
    with_table = dataclasses.replace(RULES, item_table=True)
    r = request.decode(json.dumps(by_ids).encode(), with_table)
    assert r.rows == 3 and r.req.item_keys() == [1, 2, 3]
    without = refused(by_ids)  # no item table: by ids is refused, naming the setting
    assert without.field == "item_ids" and "RANKER_ITEM_TABLE" in without.message
    assert refused({**body(), "item_ids": [1]}).field == "item_ids"
    assert refused({k: v for k, v in body().items() if k != "candidates"}).field == "candidates"
    many = {**by_ids, "item_ids": list(range(2001))}
    assert "2001 candidates" in refused(many).message


def test_the_settings_rules_come_from_the_settings():
    from service.config import Settings

    rules = request.Rules.from_settings(Settings(max_candidates=7, fusion_c=0.5, fusion_max=2))
    assert rules.max_candidates == 7 and rules.default_fusion.c == 0.5 and rules.fusion_max == 2
    assert not rules.item_table and not rules.user_store
    stored = request.Rules.from_settings(Settings(user_store="redis://localhost:6379/0"))
    assert stored.user_store and not stored.item_table
    no_user = {k: v for k, v in body().items() if k != "user_features"}
    assert request.decode(json.dumps(no_user).encode(), stored).req.user_features is None
    e = refused(no_user)  # no user store: user_features is required, naming the setting
    assert e.field == "user_features" and "RANKER_USER_STORE" in e.message
    with pytest.raises(ValueError, match="fusion_max"):
        Settings(fusion_max=100)  # exponents past 8 could overflow float64


def test_size_reads_rows_and_timeout_without_decoding():
    assert request.size(json.dumps(body(timeout_ms=50)).encode(), RULES) == request.Size(3, 0.05)
    assert request.size(json.dumps(body()).encode(), RULES) == request.Size(3, 1.0)
    wrong = body(timeout_ms="soon")  # left to decode, which names it
    assert request.size(json.dumps(wrong).encode(), RULES) == request.Size(3, 1.0)
    assert refused(wrong).field == "timeout_ms"
