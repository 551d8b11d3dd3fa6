"""Arms: users split into sticky, salted buckets, each arm with its own fusion (RANKER_ARMS).

A config is a YAML file:

    salt: fusion-2026-12          # a new experiment, a new salt: its buckets are independent
    arms:
      - {name: control, share: 0.5}                      # the service's default fusion
      - {name: price, share: 0.4, fusion: {c: 0.5}}      # its overrides of the default
      - {name: next, share: 0.1, model: esmm/v7}         # a version under RANKER_MODEL_DIR
    shadow: {model: esmm/v8, sample: 0.05}               # scored beside, never served

A user's arm is a pure function of the salt and its id: the first 8 bytes of BLAKE2b over the
salt and the id (its type tagged, so 5 and "5" are two users) as a number in [0, 1), against the
arms' cumulative shares. So a user keeps its arm across requests, restarts and replicas, and two
experiments with different salts split users independently (a modulo of raw ids would put the
same users together in every experiment). A request's own `fusion` fields still win over its
arm's, as over the default.

The config is strict: shares in (0, 1] summing to 1, names of `A-Za-z0-9_.-` (at most 64, they
label metrics), fusion exponents within RANKER_FUSION_MIN..MAX, nothing else: a key misspelt
and ignored would serve another experiment than the one written.

An arm's `model` is a version folder under RANKER_MODEL_DIR that its users are served by instead
of the current version (which the others keep, reloads and all); `shadow` scores a `sample` of
all answers again with another version, off the request path, and the impression log keeps its
scores beside the served ones (RANKER_LOG_DIR; shadow scoring needs the log). Both are loaded
and checked as a reload loads a version (service/reload.py) before the config is installed: a
folder that is no model, or a model that fails its checks, refuses the whole config and the old
one keeps serving. Versions a new config no longer names close once their last request is done.

The sample-ratio check: the arms' distinct users (up to SRM_USERS since the config was loaded)
against the configured shares, by a chi-square test; a p-value under SRM_P with at least
SRM_MIN_USERS users means the assignment or what reaches the service is broken (a client that
retries only one arm's failures, a cache in front that serves one arm): it is logged and
exported (`ranker_arms_sample_ratio_mismatch`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from service import fusion

log = logging.getLogger("service.arms")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SRM_USERS = 200_000  # distinct users the check remembers per config
SRM_MIN_USERS = 1_000
SRM_P = 0.001
SRM_EVERY = 500  # new users between two checks


class ArmsError(ValueError):
    """A config that cannot be served; the message names the key at fault."""


@dataclass(frozen=True)
class Arm:
    name: str
    share: float
    fusion: fusion.FusionParams
    model: str | None = None  # a version folder under RANKER_MODEL_DIR; None: the current one


@dataclass(frozen=True)
class Shadow:
    model: str  # a version folder under RANKER_MODEL_DIR
    sample: float  # the share of answers it scores again


def bucket(salt: str, user_id: int | str) -> float:
    """A user's place in [0, 1) under `salt`."""
    tag = b"i" if isinstance(user_id, int) else b"s"
    digest = hashlib.blake2b(
        salt.encode() + b"\0" + tag + str(user_id).encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Arms:
    def __init__(self, salt: str, arms: list[Arm], source: str = "", shadow: Shadow | None = None):
        self.salt, self.arms, self.source, self.shadow = salt, arms, source, shadow
        self.slots: dict = {}  # model folder -> its ModelSlot (attach_models)
        self.bounds = np.cumsum([a.share for a in arms])
        self.bounds[-1] = 1.0  # shares summing to 1 within rounding: the last arm ends at 1
        self.index = {a.name: k for k, a in enumerate(arms)}
        self.seen: set[int] = set()
        self.users = [0] * len(arms)
        self.mismatch = False

    @classmethod
    def load(cls, path: Path, rules) -> Arms:
        """A config file checked against the service's fusion default and bounds (`rules`:
        request.Rules); raises ArmsError naming what is wrong."""
        where = str(path)
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise ArmsError(f"{where}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise ArmsError(f"{where}: not YAML: {e}") from None
        if not isinstance(doc, dict):
            raise ArmsError(f"{where}: a mapping with `salt` and `arms` is expected")
        _only(doc, {"salt", "arms", "shadow"}, where)
        salt = doc.get("salt")
        if not isinstance(salt, str) or not salt:
            raise ArmsError(f"{where}: salt: a non-empty text is required")
        items = doc.get("arms")
        if not isinstance(items, list) or not items:
            raise ArmsError(f"{where}: arms: a list of at least one arm is required")
        arms, names = [], set()
        for i, a in enumerate(items):
            at = f"{where}: arms[{i}]"
            if not isinstance(a, dict):
                raise ArmsError(f"{at}: a mapping with `name` and `share` is expected")
            _only(a, {"name", "share", "fusion", "model"}, at)
            name = a.get("name")
            if not isinstance(name, str) or not NAME.fullmatch(name):
                raise ArmsError(f"{at}.name: 1-64 characters of A-Za-z0-9_.- (got {name!r})")
            if name in names:
                raise ArmsError(f"{at}.name: {name!r} is given twice")
            names.add(name)
            share = a.get("share")
            if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
                raise ArmsError(f"{at}.share: a number in (0, 1] (got {share!r})")
            model = _model(a, at)
            fused = _fusion(a.get("fusion"), rules, f"{at}.fusion")
            arms.append(Arm(name, float(share), fused, model))
        total = sum(a.share for a in arms)
        if abs(total - 1.0) > 1e-9:
            raise ArmsError(f"{where}: arms: the shares sum to {total:g}, not 1")
        shadow = None
        if doc.get("shadow") is not None:
            sh = doc["shadow"]
            if not isinstance(sh, dict):
                raise ArmsError(f"{where}: shadow: a mapping of model and sample is expected")
            _only(sh, {"model", "sample"}, f"{where}: shadow")
            model = _model(sh, f"{where}: shadow")
            if model is None:
                raise ArmsError(f"{where}: shadow.model: the version folder to score with")
            sample = sh.get("sample", 1.0)
            if isinstance(sample, bool) or not isinstance(sample, int | float):
                raise ArmsError(f"{where}: shadow.sample: a number in (0, 1] (got {sample!r})")
            if not 0 < sample <= 1:
                raise ArmsError(f"{where}: shadow.sample: a number in (0, 1] (got {sample!r})")
            shadow = Shadow(model, float(sample))
        return cls(salt, arms, where, shadow)

    def models(self) -> list[str]:
        """The version folders the config names (arms' and shadow's), each once."""
        named = [a.model for a in self.arms if a.model]
        if self.shadow is not None:
            named.append(self.shadow.model)
        return list(dict.fromkeys(named))

    def assign(self, user_id: int | str) -> Arm:
        """The user's arm, counted for the sample-ratio check when the user is new to it."""
        u = bucket(self.salt, user_id)
        k = min(int(np.searchsorted(self.bounds, u, side="right")), len(self.arms) - 1)
        key = int(u * 2.0**64)
        if len(self.seen) < SRM_USERS and key not in self.seen:
            self.seen.add(key)
            self.users[k] += 1
            if len(self.seen) % SRM_EVERY == 0:
                self.check()
        return self.arms[k]

    def check(self) -> float | None:
        """The chi-square test of the distinct users per arm against the shares: its p-value
        (None under SRM_MIN_USERS users); sets `mismatch` and logs when it changes."""
        n = sum(self.users)
        if n < SRM_MIN_USERS or len(self.arms) < 2:
            return None
        stat = sum(
            (seen - n * a.share) ** 2 / (n * a.share)
            for seen, a in zip(self.users, self.arms, strict=True)
        )
        p = chi2_sf(stat, len(self.arms) - 1)
        mismatch = p < SRM_P
        if mismatch != self.mismatch:
            self.mismatch = mismatch
            shares = ", ".join(
                f"{a.name} {seen / n:.3f} (configured {a.share:g})"
                for seen, a in zip(self.users, self.arms, strict=True)
            )
            if mismatch:
                log.warning("arms: sample ratio mismatch over %d users, p=%.2g: %s", n, p, shares)
            else:
                log.info("arms: sample ratios back within bounds over %d users: %s", n, shares)
        return p


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


async def watch(
    path: Path,
    rules,
    every_s: float,
    install: Callable[[Arms], None],
    refused: Callable[[str], None] = lambda reason: None,
    prepare: Callable[[Arms], Awaitable[None]] | None = None,
) -> None:
    """Re-read the config when its file changes. One that loads (and whose models `prepare`
    loads) is installed at once (a request reads the arms once, so none sees two); one that
    does not is refused, its reason logged, and the old one keeps serving."""
    seen = _stamp(path)
    while True:
        await asyncio.sleep(every_s)
        stamp = _stamp(path)
        if stamp == seen:
            continue
        seen = stamp
        try:
            arms = await asyncio.to_thread(Arms.load, path, rules)
            if prepare is not None:
                await prepare(arms)
        except ArmsError as e:
            log.error("arms config refused, the old one keeps serving: %s", e)
            refused(str(e))
            continue
        install(arms)
        log.info("arms config loaded: %s", ", ".join(f"{a.name} {a.share:g}" for a in arms.arms))


def _model(d: dict, where: str) -> str | None:
    m = d.get("model")
    if m is None:
        return None
    if not isinstance(m, str) or not m or m.startswith(("/", "\\")) or ".." in Path(m).parts:
        raise ArmsError(f"{where}.model: a version folder relative to RANKER_MODEL_DIR (got {m!r})")
    return m


def _only(d: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise ArmsError(
            f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def _fusion(given, rules, where: str) -> fusion.FusionParams:
    d = rules.default_fusion
    if given is None:
        return d
    if not isinstance(given, dict):
        raise ArmsError(f"{where}: a mapping of policy, a, b, c is expected")
    _only(given, {"policy", "a", "b", "c"}, where)
    policy = given.get("policy", d.policy)
    if policy not in ("product", "sum"):
        raise ArmsError(f"{where}.policy: product or sum (got {policy!r})")
    values = {}
    for k in ("a", "b", "c"):
        v = given.get(k, getattr(d, k))
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ArmsError(f"{where}.{k}: a number (got {v!r})")
        if not rules.fusion_min <= v <= rules.fusion_max:
            raise ArmsError(
                f"{where}.{k}={v} is outside [RANKER_FUSION_MIN, RANKER_FUSION_MAX] = "
                f"[{rules.fusion_min}, {rules.fusion_max}]"
            )
        values[k] = float(v)
    return fusion.FusionParams(policy, **values)


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for a chi-square variable of `df` degrees of freedom (closed forms: a finite
    series for even df, erfc and a series for odd df)."""
    if x <= 0:
        return 1.0
    half = x / 2.0
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(half) * math.exp(-half) * 2.0 / math.sqrt(math.pi)
    for i in range(1, (df + 1) // 2):
        total += term
        term *= half / (i + 0.5)
    return min(1.0, total)
