"""The feature spec: a team's own tables and features, declared by name in one YAML file.

A spec says where the tables are (events with labels, one row per impression; users; items),
which columns key them, and which features the model reads, each by name with its side and kind
(docs/spec.md documents every key). `load(path)` reads it and checks everything that needs no
data: unknown keys, a feature named twice, a cross over a missing feature, a shared embedding
whose members disagree; `check_columns(spec, schemas)` then checks it against the tables' column
types before any row is read. Every refusal is a SpecError that names the key or the column and
the spec's line.

This module is the declaration only (numpy-free, and below the contract: it imports nothing of
the project; PyYAML imported when a file is read). What training fits from the data (hash
sizes, numeric bounds, offsets) lives in the feature contract, built from the spec by
`features.contract.FeatureContract.from_spec`; the model's manifest keeps both, so the service
never reads a spec file.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SIDES = ("user", "item", "context", "event", "cross")
LAYOUTS = ("tables", "aliccp")
KINDS = ("id", "ids", "numeric")
POOLINGS = ("mean", "sum")
SPLITS = ("train", "test")
NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
DEFAULT_MAX_LEN = 32  # columns of an `ids` feature unless it says
DEFAULT_NUMERIC_BUCKETS = 32  # quantile buckets of a numeric or cross feature unless it says
MAX_MAX_LEN = 4096
MAX_BUCKETS = 1 << 24

_TOP = {"keys", "labels", "tables", "features", "price", "layout"}
_REQUIRED = {"keys", "labels", "features"}  # and tables, in the tables layout
_KEYS = {"user", "item", "request"}
_LABELS = {"click", "conversion"}
_TABLES = {"events", "users", "items"}
_FEATURE = {
    "name",
    "side",
    "kind",
    "column",
    "weights",
    "embedding",
    "max_len",
    "buckets",
    "min_count",
    "pooling",
    "count_in",
    "raw",
}
_COUNT_IN = {"list", "key"}

# Column types as `check_columns` receives them (training/tables.py maps Arrow's onto these).
INT, TEXT, FLOAT, BOOL = "int", "text", "float", "bool"


class SpecError(ValueError):
    """A spec that cannot be used; the message names the key or column and the spec's line."""


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    side: str  # user | item | context | cross
    kind: str  # id | ids | numeric (a cross is numeric: the weight it counts)
    column: str = ""  # the table's column; "" for a cross
    weights: str = ""  # ids: a list column of weights, as long as the ids' lists
    embedding: str = ""  # id/ids: the shared table's name ("" = a table of its own)
    max_len: int = 1  # columns: 1 for id and numeric
    buckets: int = 0  # id/ids: hash buckets (0 = fitted); numeric: at most this many buckets
    min_count: int = 0  # id/ids: ids seen fewer times in training share one row (0: the trainer's)
    pooling: str = "mean"  # ids: weighted mean or sum of the list's embeddings
    count_in: tuple[str, str] = ()  # cross: (user ids feature, item id/ids feature)
    # id/ids: "" when the column holds values as a request sends them; "int" or "text" when it
    # holds the raw ids such values become (features/values.py), as the impression log keeps
    # them (ranker join): read as they are, and requests still send that type of value
    raw: str = ""
    line: int = 0

    @property
    def table(self) -> str:
        """The embedding table this feature reads (its group, or its own)."""
        return self.embedding or self.name

    def to_dict(self) -> dict:
        d = {"name": self.name, "side": self.side, "kind": self.kind}
        if self.side == "cross":
            d["count_in"] = {"list": self.count_in[0], "key": self.count_in[1]}
        else:
            d["column"] = self.column
        for key, default in (("weights", ""), ("embedding", ""), ("min_count", 0)):
            if getattr(self, key) != default:
                d[key] = getattr(self, key)
        if self.kind == "ids":
            d["max_len"], d["pooling"] = self.max_len, self.pooling
        if self.buckets:
            d["buckets"] = self.buckets
        if self.raw:
            d["raw"] = self.raw
        return d


@dataclasses.dataclass(frozen=True)
class Spec:
    keys: Mapping[str, str]  # user, item, request ("" when the events have no request id)
    labels: Mapping[str, str]  # click, conversion
    events: Mapping[str, str]  # split -> path as written (relative to `root`)
    users: str  # "" when no feature reads the users table
    items: str
    features: tuple[Feature, ...]
    price: str = ""  # the items column the fusion's price comes from ("" = none)
    root: Path = Path(".")  # the spec file's folder: table paths are relative to it
    source: str = "<spec>"  # the file, for messages
    lines: Mapping[str, int] = dataclasses.field(default_factory=dict, compare=False)  # top keys
    layout: str = "tables"  # or aliccp: the raw Ali-CCP files of a folder (features/aliccp.yaml)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature {name!r} in the spec")

    def side(self, side: str) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.side == side)

    def table_of(self, f: Feature) -> str:
        """The table a feature's column is in: its side's table, or the events table for a
        context feature and for a user or item feature of a spec with no table of that side
        (the user or item as of each event: what an impression log holds)."""
        if f.side == "user" and self.users:
            return "users"
        if f.side == "item" and self.items:
            return "items"
        return "events"

    def per_event(self, side: str) -> tuple[Feature, ...]:
        """The user's or item's features read from each event (no table of that side), the
        feature on the key column aside (every event has its key)."""
        return tuple(
            f
            for f in self.side(side)
            if self.table_of(f) == "events" and f.column != self.keys[side]
        )

    def table_path(self, table: str, split: str = "train") -> Path:
        """A table's file, resolved against the spec's folder."""
        rel = self.events[split] if table == "events" else getattr(self, table)
        return (self.root / rel).resolve()

    def to_dict(self) -> dict:
        """The spec as declared, defaults filled in (what the model's manifest keeps)."""
        tables: dict[str, Any] = {"events": dict(self.events)}
        for t in ("users", "items"):
            if getattr(self, t):
                tables[t] = getattr(self, t)
        return {
            **({"layout": self.layout} if self.layout != "tables" else {"tables": tables}),
            "keys": dict(self.keys),
            "labels": dict(self.labels),
            "features": [f.to_dict() for f in self.features],
            **({"price": self.price} if self.price else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping, root: Path = Path("."), source: str = "<manifest>") -> Spec:
        return _build(d, root, source)

    def fixed_buckets(self) -> dict[str, int]:
        """Tables whose size the spec sets (`buckets` of an id/ids feature)."""
        return {f.table: f.buckets for f in self.features if f.kind != "numeric" and f.buckets}

    def min_counts(self, default: int) -> dict[str, int]:
        """Each table's min_count: its features', else `default` (the trainer's)."""
        return {f.table: f.min_count or default for f in self.features if f.kind != "numeric"}


# ---- reading ----------------------------------------------------------------------------------
def load(path: Path | str) -> Spec:
    """Read and check a spec file (no table is opened); SpecError on anything wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read the spec ({e})") from None
    return loads(text, path.parent, str(path))


def loads(text: str, root: Path = Path("."), source: str = "<spec>") -> Spec:
    import yaml

    try:
        doc = yaml.load(text, Loader=_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 0
        raise SpecError(f"{source}:{line}: not valid YAML ({e.problem})") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not valid YAML ({e})") from None
    except _Twice as e:
        raise SpecError(f"{source}:{e.line}: key {e.key!r} {e.problem}") from None
    return _build(doc, Path(root), source)


class _Map(dict):
    """A YAML mapping that remembers its line and each key's line."""

    line = 0
    key_lines: dict

    def at(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _Seq(list):
    line = 0
    item_lines: list


class _Twice(Exception):
    """A mapping key given twice (or not text), found while the YAML is built."""

    def __init__(self, line: int, key, problem: str = "is given twice"):
        self.line, self.key, self.problem = line, key, problem


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        m = _Map()
        m.line, m.key_lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise _Twice(key_node.start_mark.line + 1, key, "is not text")
            if key in m:
                raise _Twice(key_node.start_mark.line + 1, key)
            m[key] = loader.construct_object(value_node, deep=True)
            m.key_lines[key] = key_node.start_mark.line + 1
        return m

    def sequence(loader, node):
        s = _Seq(loader.construct_object(n, deep=True) for n in node.value)
        s.line = node.start_mark.line + 1
        s.item_lines = [n.start_mark.line + 1 for n in node.value]
        return s

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, sequence)
    return Loader


# ---- checking ---------------------------------------------------------------------------------
class _Check:
    def __init__(self, source: str):
        self.source = source

    def fail(self, line: int, what: str, message: str):
        where = f"{self.source}:{line}" if line else self.source
        raise SpecError(f"{where}: {what}: {message}")

    def mapping(self, value, what: str, line: int, allowed: set, required: set) -> Mapping:
        if not isinstance(value, dict):
            self.fail(line, what, f"expected a mapping, got {_kind(value)}")
        at = value.at if isinstance(value, _Map) else (lambda k: line)
        for key in value:
            if key not in allowed:
                self.fail(
                    at(key), f"{what}.{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}"
                )
        for key in sorted(required):
            if key not in value:
                self.fail(line, what, f"missing required key {key!r}")
        return value

    def text(self, m: Mapping, key: str, what: str, line: int, pattern=None) -> str:
        v = m[key]
        where = m.at(key) if isinstance(m, _Map) else line
        if not isinstance(v, str) or not v.strip():
            self.fail(where, f"{what}.{key}", f"expected a non-empty text, got {_kind(v)}")
        if pattern is not None and not pattern.match(v):
            self.fail(
                where, f"{what}.{key}", f"{v!r} is not a name (letters, digits, _; at most 64)"
            )
        return v

    def integer(self, m: Mapping, key: str, what: str, line: int, lo: int, hi: int) -> int:
        v = m[key]
        where = m.at(key) if isinstance(m, _Map) else line
        if type(v) is not int:
            self.fail(where, f"{what}.{key}", f"expected an integer, got {_kind(v)}")
        if not lo <= v <= hi:
            self.fail(where, f"{what}.{key}", f"{v} is outside [{lo}, {hi}]")
        return v

    def choice(self, m: Mapping, key: str, what: str, line: int, choices) -> str:
        v = m[key]
        where = m.at(key) if isinstance(m, _Map) else line
        if v not in choices:
            self.fail(where, f"{what}.{key}", f"{v!r} is not one of {', '.join(choices)}")
        return v


def _kind(v) -> str:
    if v is None:
        return "nothing"
    if isinstance(v, bool):
        return f"a boolean ({v})"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, str):
        return f"text {v!r}" if v.strip() else "empty text"
    return f"{type(v).__name__} {v!r}"


def _line(v, default: int = 0) -> int:
    return getattr(v, "line", default) or default


def _build(doc, root: Path, source: str) -> Spec:
    c = _Check(source)
    if doc is None:
        c.fail(0, "spec", "the file is empty")
    top = c.mapping(doc, "spec", _line(doc, 1), _TOP, _REQUIRED)
    at = top.at if isinstance(top, _Map) else (lambda k: 0)
    layout = c.choice(top, "layout", "spec", at("layout"), LAYOUTS) if "layout" in top else "tables"
    if layout == "tables" and "tables" not in top:
        c.fail(1, "spec", "missing required key 'tables'")
    if layout == "aliccp":
        for key in ("tables", "price"):
            if key in top:
                c.fail(at(key), key, "the Ali-CCP layout's files are the folder `--data` names")

    keys = c.mapping(top["keys"], "keys", at("keys"), _KEYS, {"user", "item"})
    key_cols = {k: c.text(keys, k, "keys", at("keys")) for k in keys}
    key_cols.setdefault("request", "")
    labels = c.mapping(top["labels"], "labels", at("labels"), _LABELS, _LABELS)
    label_cols = {k: c.text(labels, k, "labels", at("labels")) for k in sorted(labels)}
    if label_cols["click"] == label_cols["conversion"]:
        c.fail(at("labels"), "labels", "click and conversion name the same column")
    taken = {v: f"keys.{k}" for k, v in key_cols.items() if v}
    for k, v in label_cols.items():
        if v in taken:
            c.fail(at("labels"), f"labels.{k}", f"column {v!r} is already {taken[v]}")

    event_paths, side_tables = {}, {"users": "", "items": ""}
    if layout == "tables":
        tables = c.mapping(top["tables"], "tables", at("tables"), _TABLES, {"events"})
        t_at = tables.at if isinstance(tables, _Map) else (lambda k: at("tables"))
        events = c.mapping(
            tables["events"], "tables.events", t_at("events"), set(SPLITS), set(SPLITS)
        )
        event_paths = {s: c.text(events, s, "tables.events", t_at("events")) for s in SPLITS}
        side_tables = {
            t: c.text(tables, t, "tables", at("tables")) if t in tables else ""
            for t in ("users", "items")
        }

    raw = top["features"]
    if not isinstance(raw, list) or not raw:
        c.fail(at("features"), "features", f"expected a non-empty list, got {_kind(raw)}")
    lines = getattr(raw, "item_lines", None) or [_line(raw)] * len(raw)
    features = [_feature(c, f, k, _line(f, lines[k])) for k, f in enumerate(raw)]
    _check_features(c, features, key_cols, label_cols, side_tables, layout)
    if "price" in top and not side_tables["items"]:
        c.fail(at("price"), "price", "the fusion's price is an items column: give tables.items")
    return Spec(
        keys=key_cols,
        price=c.text(top, "price", "spec", 0) if "price" in top else "",
        labels=label_cols,
        events=event_paths,
        users=side_tables["users"],
        items=side_tables["items"],
        features=tuple(features),
        root=root,
        source=source,
        lines={k: at(k) for k in _TOP if k in top},
        layout=layout,
    )


def _feature(c: _Check, f, k: int, line: int) -> Feature:
    what = f"features[{k}]"
    m = c.mapping(f, what, line, _FEATURE, {"name", "side"})
    name = c.text(m, "name", what, line, NAME)
    what = f"features[{k}] ({name})"
    side = c.choice(m, "side", what, line, SIDES)
    at = m.at if isinstance(m, _Map) else (lambda key: line)
    if side == "cross":
        if "count_in" not in m:
            c.fail(
                line,
                what,
                "a cross needs count_in: {list: <user ids feature>, key: <item feature>}",
            )
        kind = c.choice(m, "kind", what, line, ("numeric",)) if "kind" in m else "numeric"
        for key in ("column", "weights", "embedding", "max_len", "pooling", "min_count"):
            if key in m:
                c.fail(
                    at(key),
                    f"{what}.{key}",
                    "a cross is computed, not read: it takes only count_in and buckets",
                )
        ci = c.mapping(m["count_in"], f"{what}.count_in", at("count_in"), _COUNT_IN, _COUNT_IN)
        count_in = tuple(
            c.text(ci, key, f"{what}.count_in", at("count_in")) for key in ("list", "key")
        )
        column = ""
    else:
        if "count_in" in m:
            c.fail(
                at("count_in"),
                f"{what}.count_in",
                f"only a cross takes count_in, not a {side} feature",
            )
        if "kind" not in m:
            c.fail(line, what, f"missing required key 'kind' ({', '.join(KINDS)})")
        kind = c.choice(m, "kind", what, line, KINDS)
        count_in = ()
        column = c.text(m, "column", what, line) if "column" in m else name
    if "weights" in m and kind != "ids":
        c.fail(at("weights"), f"{what}.weights", f"only an ids feature has weights, not {kind}")
    if "weights" in m and side in ("context", "event"):
        c.fail(
            at("weights"),
            f"{what}.weights",
            f"a {side} list is sent without weights online: weights are for user and item lists",
        )
    if "pooling" in m and kind != "ids":
        c.fail(at("pooling"), f"{what}.pooling", f"only an ids feature is pooled, not {kind}")
    if "max_len" in m and kind != "ids":
        c.fail(at("max_len"), f"{what}.max_len", f"a {kind} feature holds one value")
    if "raw" in m and (side == "cross" or kind == "numeric"):
        c.fail(at("raw"), f"{what}.raw", f"a {kind} feature holds numbers, not ids")
    if kind == "numeric":
        for key in ("embedding", "min_count"):
            if key in m:
                c.fail(at(key), f"{what}.{key}", "a numeric feature has bucket rows of its own")
    return Feature(
        name=name,
        side=side,
        kind=kind,
        column=column,
        weights=c.text(m, "weights", what, line) if "weights" in m else "",
        embedding=c.text(m, "embedding", what, line, NAME) if "embedding" in m else "",
        max_len=(
            c.integer(m, "max_len", what, line, 1, MAX_MAX_LEN)
            if "max_len" in m
            else (DEFAULT_MAX_LEN if kind == "ids" else 1)
        ),
        buckets=(
            c.integer(m, "buckets", what, line, 2, MAX_BUCKETS)
            if "buckets" in m
            else (DEFAULT_NUMERIC_BUCKETS if kind == "numeric" else 0)
        ),
        min_count=c.integer(m, "min_count", what, line, 1, 1 << 30) if "min_count" in m else 0,
        pooling=c.choice(m, "pooling", what, line, POOLINGS) if "pooling" in m else "mean",
        count_in=count_in,
        raw=c.choice(m, "raw", what, line, (INT, TEXT)) if "raw" in m else "",
        line=line,
    )


def _check_features(
    c: _Check,
    features: list[Feature],
    keys: Mapping,
    labels: Mapping,
    tables: Mapping,
    layout: str = "tables",
) -> None:
    by_name: dict[str, Feature] = {}
    for f in features:
        if f.name in by_name:
            c.fail(
                f.line,
                f"features ({f.name})",
                f"named twice (first at line {by_name[f.name].line})",
            )
        by_name[f.name] = f
    on_key: dict[str, Feature] = {}
    for f in features:
        side = f.side if f.side in ("user", "item") else ""
        if not side or f.column != keys[side]:
            continue
        if f.kind != "id":
            c.fail(f.line, f"features ({f.name})", f"it reads the {side} key: it is an id feature")
        if side in on_key:
            c.fail(
                f.line,
                f"features ({f.name})",
                f"{on_key[side].name} reads the {side} key already: one feature per key",
            )
        on_key[side] = f
    groups: dict[str, list[Feature]] = {}
    for f in features:
        what = f"features ({f.name})"
        for col in (f.column, f.weights):
            for k, v in labels.items():
                if col == v:
                    c.fail(
                        f.line, what, f"column {col!r} is the {k} label: a label is never a feature"
                    )
        if f.side == "cross":
            lst, key = (by_name.get(n) for n in f.count_in)
            if lst is None:
                c.fail(f.line, f"{what}.count_in.list", f"no feature named {f.count_in[0]!r}")
            if key is None:
                c.fail(f.line, f"{what}.count_in.key", f"no feature named {f.count_in[1]!r}")
            if lst.side != "user" or lst.kind != "ids":
                c.fail(
                    f.line,
                    f"{what}.count_in.list",
                    f"{lst.name} is a {lst.side} {lst.kind} "
                    "feature; a cross counts in a user's ids list",
                )
            if key.side != "item" or key.kind == "numeric":
                c.fail(
                    f.line,
                    f"{what}.count_in.key",
                    f"{key.name} is a {key.side} {key.kind} "
                    "feature; a cross looks up an item's id or ids",
                )
            if lst.table != key.table and (lst.embedding or key.embedding):
                c.fail(
                    f.line,
                    f"{what}.count_in",
                    f"{lst.name} and {key.name} read different "
                    "embedding tables, so their ids are not one space",
                )
        if f.embedding:
            groups.setdefault(f.embedding, []).append(f)
    for name, members in groups.items():
        for key, unset in (("buckets", "fitted"), ("min_count", "the trainer's")):
            if len({getattr(f, key) for f in members if key == "min_count" or f.buckets}) > 1:
                c.fail(
                    members[0].line,
                    f"embedding {name}",
                    f"its features disagree on {key} ("
                    + ", ".join(f"{f.name}: {getattr(f, key) or unset}" for f in members)
                    + ")",
                )
        if name in by_name and by_name[name] not in members:
            c.fail(
                members[0].line,
                f"embedding {name}",
                f"is the name of feature {name!r}, which is not in the group",
            )


# ---- against the tables -----------------------------------------------------------------------
def check_columns(spec: Spec, schemas: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The spec against its tables' column types (`schemas`: table -> column -> type, where a
    type is int, text, float, bool or list<...> of one of them; `events` is the train split's,
    the test split's checked equal by the reader). A table left out of `schemas` is not checked
    (a store's loader reads one side table). Returns each checked id/ids feature's value type
    (int or text), and the keys' as `keys.user` and `keys.item`: ids are hashed from it, so a
    shared table's members must agree on it."""
    c = _Check(spec.source)
    L = lambda key: spec.lines.get(key, 0)  # noqa: E731 (a top-level key's line)
    ev = schemas.get("events")
    if ev is not None:
        for role, col in spec.keys.items():
            if col and col not in ev:
                c.fail(L("keys"), f"keys.{role}", f"the events table has no column {col!r}")
            if col and ev[col] not in (INT, TEXT):
                c.fail(
                    L("keys"),
                    f"keys.{role}",
                    f"column {col!r} of the events table is {ev[col]}, not an integer or text key",
                )
        for role, col in spec.labels.items():
            if col not in ev:
                c.fail(L("labels"), f"labels.{role}", f"the events table has no column {col!r}")
            if ev[col] not in (INT, BOOL):
                c.fail(
                    L("labels"),
                    f"labels.{role}",
                    f"column {col!r} is {ev[col]}; a label is 0/1 or boolean",
                )
    dtypes: dict[str, str] = {}
    for table, role in (("users", "user"), ("items", "item")):
        key = spec.keys[role]
        if ev is not None:
            dtypes[f"keys.{role}"] = TEXT if ev[key] == TEXT else INT
        path = getattr(spec, table)
        if not path or table not in schemas:
            continue
        cols = schemas[table]
        if key not in cols:
            c.fail(
                L("tables"), f"tables.{table}", f"{path} has no key column {key!r} (keys.{role})"
            )
        if cols[key] not in (INT, TEXT):
            c.fail(
                L("keys"),
                f"keys.{role}",
                f"column {key!r} of {table} is {cols[key]}, not an integer or text key",
            )
        if ev is not None and cols[key] != ev[key]:
            c.fail(
                L("keys"),
                f"keys.{role}",
                f"column {key!r} is {ev[key]} in the events table but {cols[key]} in {table}",
            )
        dtypes[f"keys.{role}"] = TEXT if cols[key] == TEXT else INT
    if spec.price:
        cols = schemas.get("items")
        if cols is not None and spec.price not in cols:
            c.fail(L("price"), "price", f"the items table has no column {spec.price!r}")
        if cols is not None and cols[spec.price] not in (INT, FLOAT):
            c.fail(
                L("price"), "price", f"column {spec.price!r} is {cols[spec.price]}, not a number"
            )
    for f in spec.features:
        if f.side == "cross":
            continue
        table = spec.table_of(f)
        key = spec.keys.get(f.side, "")
        if f.side in ("user", "item") and f.column == key:
            cols = schemas.get("events") or schemas.get(table)  # the key: every event has it
        else:
            cols = schemas.get(table)
        if cols is None:
            continue
        what = f"features ({f.name})"
        if f.column not in cols:
            hint = ""
            if table == "events" and f.side in ("user", "item"):
                hint = (
                    f" (a {f.side} feature is read from tables.{f.side}s, where the spec names one)"
                )
            c.fail(f.line, f"{what}.column", f"the {table} table has no column {f.column!r}{hint}")
        t = cols[f.column]
        want = {
            "id": (INT, TEXT),
            "ids": (f"list<{INT}>", f"list<{TEXT}>"),
            "numeric": (INT, FLOAT, BOOL),
        }[f.kind]
        if f.raw:  # raw ids are integers, whatever values they were made from
            want = want[:1]
        if t not in want:
            c.fail(
                f.line,
                f"{what}.column",
                f"column {f.column!r} is {t}; a {f.kind} feature reads {' or '.join(want)}",
            )
        if f.weights:
            if f.weights not in cols:
                c.fail(f.line, f"{what}.weights", f"the {table} table has no column {f.weights!r}")
            if cols[f.weights] not in (f"list<{INT}>", f"list<{FLOAT}>"):
                c.fail(
                    f.line,
                    f"{what}.weights",
                    f"column {f.weights!r} is {cols[f.weights]}, not a list of numbers",
                )
        if f.kind != "numeric":
            dtypes[f.name] = f.raw or (TEXT if TEXT in t else INT)
    groups: dict[str, tuple[str, str]] = {}
    for f in spec.features:
        if f.name in dtypes and f.embedding:
            first = groups.setdefault(f.embedding, (f.name, dtypes[f.name]))
            if first[1] != dtypes[f.name]:
                c.fail(
                    f.line,
                    f"embedding {f.embedding}",
                    f"{first[0]} holds {first[1]} values but {f.name} holds {dtypes[f.name]}: "
                    "one table needs one id space",
                )
    for f in spec.features:
        lst, key = f.count_in or ("", "")
        if f.side == "cross" and lst in dtypes and key in dtypes and dtypes[lst] != dtypes[key]:
            c.fail(
                f.line,
                f"features ({f.name}).count_in",
                f"{lst} holds {dtypes[lst]} values but {key} holds {dtypes[key]}: no item value "
                "could ever be in the list",
            )
    return dtypes
