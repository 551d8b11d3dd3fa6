"""features/spec.py: a spec is read strictly, and every kind of bad spec is refused with a
message naming the key (or column) and the spec's line."""

from __future__ import annotations

import pytest

from features import spec as S

GOOD = """\
keys: {user: user_id, item: item_id, request: request_id}
labels: {click: click, conversion: conversion}
tables:
  events: {train: events_train.parquet, test: events_test.parquet}
  users: users.parquet
  items: items.parquet
features:
  - {name: gender, side: user, kind: id}
  - {name: recent_categories, side: user, kind: ids,
     weights: recent_categories_count, embedding: category}
  - {name: category, side: item, kind: id, embedding: category}
  - {name: price, side: item, kind: numeric}
  - {name: scene, side: context, kind: id}
  - {name: category_affinity, side: cross,
     count_in: {list: recent_categories, key: category}}
"""


def test_the_issue_example_reads_with_its_defaults():
    spec = S.loads(GOOD)
    assert spec.keys == {"user": "user_id", "item": "item_id", "request": "request_id"}
    assert [f.name for f in spec.features] == [
        "gender",
        "recent_categories",
        "category",
        "price",
        "scene",
        "category_affinity",
    ]
    rc = spec.feature("recent_categories")
    assert (rc.kind, rc.max_len, rc.pooling, rc.table, rc.line) == (
        "ids",
        32,
        "mean",
        "category",
        9,
    )
    assert spec.feature("gender").column == "gender"
    assert spec.feature("price").buckets == S.DEFAULT_NUMERIC_BUCKETS
    cross = spec.feature("category_affinity")
    assert (cross.kind, cross.count_in) == ("numeric", ("recent_categories", "category"))
    # the declared spec round-trips through the dict the manifest keeps
    again = S.Spec.from_dict(spec.to_dict())
    assert again.features == tuple(S.dataclasses.replace(f, line=0) for f in spec.features)


def test_block_style_yaml_and_comments_read_the_same():
    block = """\
# a comment
keys:
  user: uid
  item: iid
labels:
  click: clk
  conversion: buy
tables:
  events:
    train: e.parquet
    test: t.parquet
features:
  - name: uid
    side: user
    kind: id
"""
    spec = S.loads(block)
    assert spec.keys["request"] == "" and not spec.users
    assert spec.feature("uid").line == 13


def _replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


# (spec text, what the message must contain, the line it must name)
BAD = {
    "yaml syntax": ("keys: {user: [\n", "not valid YAML", None),
    "empty file": ("", "the file is empty", None),
    "not a mapping": ("- 1\n- 2\n", "expected a mapping", None),
    "unknown top key": (GOOD + "extra: 1\n", "extra: unknown key", 16),
    "missing features": (GOOD.split("features:")[0], "missing required key 'features'", None),
    "key twice": (GOOD + "keys: {user: a, item: b}\n", "'keys' is given twice", 16),
    "unknown keys entry": (
        _replace("request: request_id}", "request: request_id, time: ts}"),
        "keys.time: unknown key",
        1,
    ),
    "missing item key": (_replace("item: item_id, ", ""), "missing required key 'item'", 1),
    "key not text": (_replace("user: user_id", "user: 12"), "keys.user: expected a non-empty", 1),
    "missing label": (
        _replace("conversion: conversion}", "purchase: conversion}"),
        "labels.purchase: unknown key",
        2,
    ),
    "labels one column": (
        _replace("conversion: conversion}", "conversion: click}"),
        "click and conversion name the same column",
        2,
    ),
    "label is a key": (
        _replace("click: click,", "click: user_id,"),
        "column 'user_id' is already keys.user",
        2,
    ),
    "events without test": (
        _replace(", test: events_test.parquet", ""),
        "missing required key 'test'",
        4,
    ),
    "unknown table": (_replace("  items: items.parquet\n", "  shops: s.parquet\n"), "shops", 6),
    "features not a list": (GOOD.split("features:")[0] + "features: {a: 1}\n", "non-empty list", 7),
    "feature not a mapping": (GOOD + "  - gender\n", "features[6]: expected a mapping", 16),
    "unknown feature key": (
        _replace(
            "{name: gender, side: user, kind: id}", "{name: gender, side: user, kind: id, hash: 3}"
        ),
        "features[0].hash: unknown key",
        8,
    ),
    "missing side": (
        _replace("{name: gender, side: user,", "{name: gender,"),
        "missing required key 'side'",
        8,
    ),
    "missing kind": (
        _replace("side: user, kind: id}", "side: user}"),
        "missing required key 'kind'",
        8,
    ),
    "bad name": (_replace("{name: gender,", "{name: 2nd-gender,"), "is not a name", 8),
    "named twice": (
        GOOD + "  - {name: gender, side: user, kind: id}\n",
        "named twice (first at line 8)",
        16,
    ),
    "bad side": (_replace("side: context", "side: session"), "'session' is not one of", 13),
    "bad kind": (
        _replace("{name: gender, side: user, kind: id}", "{name: gender, side: user, kind: text}"),
        "'text' is not one of",
        8,
    ),
    "weights on an id": (
        _replace("kind: id, embedding: category}", "kind: id, weights: w, embedding: category}"),
        "only an ids feature has weights",
        11,
    ),
    "max_len on an id": (
        _replace(
            "{name: gender, side: user, kind: id}",
            "{name: gender, side: user, kind: id, max_len: 4}",
        ),
        "a id feature holds one value",
        8,
    ),
    "max_len zero": (
        _replace(
            "weights: recent_categories_count,", "weights: recent_categories_count, max_len: 0,"
        ),
        "max_len: 0 is outside",
        10,
    ),
    "max_len a boolean": (
        _replace(
            "weights: recent_categories_count,", "weights: recent_categories_count, max_len: true,"
        ),
        "expected an integer, got a boolean",
        10,
    ),
    "buckets of one": (
        _replace(
            "{name: price, side: item, kind: numeric}",
            "{name: price, side: item, kind: numeric, buckets: 1}",
        ),
        "buckets: 1 is outside",
        12,
    ),
    "pooling unknown": (
        _replace(
            "embedding: category}\n  - {name: category",
            "embedding: category, pooling: max}\n  - {name: category",
        ),
        "'max' is not one of mean, sum",
        10,
    ),
    "pooling on an id": (
        _replace(
            "{name: gender, side: user, kind: id}",
            "{name: gender, side: user, kind: id, pooling: sum}",
        ),
        "only an ids feature is pooled",
        8,
    ),
    "embedding on numeric": (
        _replace(
            "{name: price, side: item, kind: numeric}",
            "{name: price, side: item, kind: numeric, embedding: p}",
        ),
        "a numeric feature has bucket rows of its own",
        12,
    ),
    "cross without count_in": (
        _replace(
            "side: cross,\n     count_in: {list: recent_categories, key: category}}", "side: cross}"
        ),
        "a cross needs count_in",
        14,
    ),
    "count_in on a user feature": (
        _replace(
            "{name: gender, side: user, kind: id}",
            "{name: gender, side: user, kind: id, count_in: {list: a, key: b}}",
        ),
        "only a cross takes count_in",
        8,
    ),
    "cross names a missing list": (
        _replace("{list: recent_categories,", "{list: recent_brands,"),
        "count_in.list: no feature named 'recent_brands'",
        14,
    ),
    "cross names a missing key": (
        _replace("key: category}}", "key: brand}}"),
        "count_in.key: no feature named 'brand'",
        14,
    ),
    "cross over a single id": (
        _replace("{list: recent_categories,", "{list: gender,"),
        "a cross counts in a user's ids list",
        14,
    ),
    "cross key on the user side": (
        _replace("key: category}}", "key: gender}}"),
        "a cross looks up an item's id or ids",
        14,
    ),
    "cross with a column": (
        _replace("side: cross,\n", "side: cross, column: c,\n"),
        "a cross is computed, not read",
        14,
    ),
    "cross of two id spaces": (
        _replace(
            "{name: category, side: item, kind: id, embedding: category}",
            "{name: category, side: item, kind: id, embedding: cat2}",
        ),
        "read different embedding tables",
        14,
    ),
    "group disagrees on size": (
        _replace(
            "kind: id, embedding: category}", "kind: id, embedding: category, buckets: 64}"
        ).replace(
            "weights: recent_categories_count,", "weights: recent_categories_count, buckets: 128,"
        ),
        "disagree on buckets",
        9,
    ),
    "group disagrees on min_count": (
        _replace("kind: id, embedding: category}", "kind: id, embedding: category, min_count: 5}"),
        "disagree on min_count",
        9,
    ),
    "a label as a feature": (
        GOOD + "  - {name: clicked, column: click, side: context, kind: id}\n",
        "a label is never a feature",
        16,
    ),
    "weights on a context list": (
        _replace(
            "{name: scene, side: context, kind: id}",
            "{name: scene, side: context, kind: ids, weights: w}",
        ),
        "a context list is sent without weights online",
        13,
    ),
    "numeric on the user key": (
        GOOD + "  - {name: uid_number, column: user_id, side: user, kind: numeric}\n",
        "it reads the user key: it is an id feature",
        16,
    ),
    "two features on the item key": (
        GOOD
        + "  - {name: item_id, side: item, kind: id}\n"
        + "  - {name: item_id_again, column: item_id, side: item, kind: id}\n",
        "item_id reads the item key already",
        17,
    ),
    "raw ids of a number": (
        _replace(
            "{name: price, side: item, kind: numeric}",
            "{name: price, side: item, kind: numeric, raw: int}",
        ),
        "a numeric feature holds numbers, not ids",
        12,
    ),
    "raw ids of another type": (
        _replace(
            "{name: category, side: item, kind: id, embedding: category}",
            "{name: category, side: item, kind: id, embedding: category, raw: float}",
        ),
        "(category).raw: 'float' is not one of int, text",
        11,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_spec_is_refused_naming_its_key_and_line(case):
    text, message, line = BAD[case]
    with pytest.raises(S.SpecError) as e:
        S.loads(text, source="spec.yaml")
    assert message in str(e.value)
    if line is not None:
        assert str(e.value).startswith(f"spec.yaml:{line}:"), str(e.value)


def test_at_least_25_kinds_of_bad_spec():
    assert len(BAD) >= 25


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(S.SpecError, match="cannot read the spec"):
        S.load(tmp_path / "nope.yaml")


SCHEMAS = {
    "events": {
        "user_id": "int",
        "item_id": "int",
        "request_id": "text",
        "click": "int",
        "conversion": "bool",
        "scene": "text",
    },
    "users": {
        "user_id": "int",
        "gender": "text",
        "recent_categories": "list<int>",
        "recent_categories_count": "list<float>",
    },
    "items": {"item_id": "int", "category": "int", "price": "float"},
}


def _schemas(**changes):
    out = {t: dict(cols) for t, cols in SCHEMAS.items()}
    for key, value in changes.items():
        table, col = key.split("__")
        if value is None:
            del out[table][col]
        else:
            out[table][col] = value
    return out


def test_the_columns_give_each_id_feature_its_value_type():
    dtypes = S.check_columns(S.loads(GOOD), SCHEMAS)
    assert dtypes == {
        "keys.user": "int",
        "keys.item": "int",
        "gender": "text",
        "recent_categories": "int",
        "category": "int",
        "scene": "text",
    }


BAD_COLUMNS = {
    "missing column": ({"users__gender": None}, "the users table has no column 'gender'"),
    "id of floats": ({"users__gender": "float"}, "a id feature reads int or text"),
    "ids not a list": ({"users__recent_categories": "int"}, "a ids feature reads list<int>"),
    "numeric of text": ({"items__price": "text"}, "a numeric feature reads"),
    "weights missing": (
        {"users__recent_categories_count": None},
        "no column 'recent_categories_count'",
    ),
    "weights of text": ({"users__recent_categories_count": "list<text>"}, "not a list of numbers"),
    "label of floats": ({"events__click": "float"}, "a label is 0/1 or boolean"),
    "label missing": ({"events__conversion": None}, "labels.conversion"),
    "key missing in events": (
        {"events__item_id": None},
        "keys.item: the events table has no column",
    ),
    "key missing in users": ({"users__user_id": None}, "has no key column 'user_id'"),
    "key types disagree": (
        {"users__user_id": "text"},
        "is int in the events table but text in users",
    ),
    "key of floats": (
        {"events__user_id": "float", "users__user_id": "float"},
        "not an integer or text key",
    ),
    "context missing": ({"events__scene": None}, "the events table has no column 'scene'"),
    "group of two id types": ({"items__category": "text"}, "one table needs one id space"),
    "request key of floats": ({"events__request_id": "float"}, "not an integer or text key"),
}


@pytest.mark.parametrize("case", sorted(BAD_COLUMNS))
def test_a_spec_its_tables_do_not_fit_is_refused_naming_the_column(case):
    changes, message = BAD_COLUMNS[case]
    with pytest.raises(S.SpecError, match=S.re.escape(message)) as e:
        S.check_columns(S.loads(GOOD, source="spec.yaml"), _schemas(**changes))
    assert S.re.match(r"spec\.yaml:[1-9][0-9]*: ", str(e.value)), str(e.value)  # its line


def test_ali_ccp_is_one_spec_and_its_contract_is_todays():
    """features/aliccp.yaml declares the Ali-CCP fields; the contract's constants come from it
    and are what they were as literals (so Ali-CCP contracts and model digests are unchanged)."""
    from features import contract as C

    spec = S.load(C.ALICCP_SPEC)
    assert spec.layout == "aliccp" and spec.keys["user"] == "101" and spec.keys["item"] == "205"
    user = ("101", "121", "122", "124", "125", "126", "127", "128", "129")
    assert user + ("109_14", "110_14", "127_14", "150_14") == C.USER_FIELDS
    assert C.ITEM_FIELDS == ("205", "206", "207", "210", "216")
    assert C.COMBINATION_FIELDS == ("508", "509", "702", "853")
    assert C.CONTEXT_FIELDS == ("301",)
    assert C.ALL_FIELDS == C.USER_FIELDS + C.ITEM_FIELDS + C.COMBINATION_FIELDS + C.CONTEXT_FIELDS
    assert C.KEY_FIELDS == ("101", "205")
    assert C.DEFAULT_MAX_LEN == {
        "109_14": 128,
        "110_14": 384,
        "127_14": 256,
        "150_14": 256,
        "210": 16,
        "853": 8,
    }
    c = C.FeatureContract.default()
    assert c.version == 1 and not any(f.source for f in c.fields)  # no spec fields: v1 JSON


def test_the_ali_ccp_layout_has_no_tables():
    base = "layout: aliccp\nkeys: {user: u, item: i}\nlabels: {click: c, conversion: v}\n"
    ok = S.loads(base + "features:\n  - {name: '1', side: event, kind: id}\n")
    assert ok.layout == "aliccp" and ok.features[0].side == "event"
    for extra, message in (
        ("tables: {events: {train: a, test: b}}\n", "tables: the Ali-CCP layout's files"),
        ("price: p\n", "price: the Ali-CCP layout's files"),
        ("layout: csv\n", "'csv' is not one of tables, aliccp"),
    ):
        text = base if "layout" not in extra else base.replace("layout: aliccp\n", extra)
        text += "features:\n  - {name: a, side: user, kind: id}\n"
        if "layout" not in extra:
            text = extra + text
        with pytest.raises(S.SpecError, match=S.re.escape(message)):
            S.loads(text)


def test_a_cross_over_two_value_types_is_refused():
    unshared = GOOD.replace(", embedding: category}", "}").replace(
        "\n     weights: recent_categories_count, embedding: category}",
        "\n     weights: recent_categories_count}",
    )
    with pytest.raises(S.SpecError, match="no item value could ever be in the list"):
        S.check_columns(S.loads(unshared), _schemas(items__category="text"))
