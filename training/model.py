"""ESMM (Ma et al., SIGIR 2018) and the paper's baselines, one class per kind, each with the loss
that belongs to it.

Every model here is split the way the service runs it:
  user_repr(user features)                      -> (U, R)  computed once per user
  score(user_repr, user_index, item features)   -> ctr / cvr logits, one per candidate row
The first layer of each tower sees [user part; item part]; W [u; x] + b = (W_u u + b) + W_x x,
so the user representation is the pooled user embeddings pushed through the user half of each
tower's first layer. That is exact, and it is also how training runs: a batch pools each of its
users once and gathers the result per row.

Kinds (`RankingModel` holds what they share; `build_model` picks the class of `cfg.kind`):
  esmm     ESMM: one embedding table shared by a CTR and a CVR tower; loss over all impressions:
           BCE(click, pCTR) + BCE(click & conversion, pCTCVR), pCTCVR = pCTR * pCVR, plus
           `cvr_weight` x BCE(conversion, pCVR) over the clicked impressions (training's
           default 0.3; 0 is the paper's loss).
  esmm-ns  ESMMNS: the same loss, but each tower has its own embedding table (ESMM-NS in the
           paper).
  base     Base: a CTR net and a CVR net with nothing shared; the CVR net is trained on clicked
           impressions only (BASE in the paper).
  division Division: a CTR net and a CTCVR net with nothing shared, each trained on all
           impressions; pCVR = pCTCVR / pCTR, capped at 1 (DIVISION in the paper). Served
           through the same contract: pCTCVR is reported as pCTR * pCVR, so it is capped at
           pCTR too.

  mmoe     MMoE + ESMM: one shared table; `experts` experts (a ReLU layer of hidden[0] each)
           and one softmax gate per task over the pooled embeddings; each task's tower reads its
           gate's mixture of experts; the ESMM loss. Experts' first layers and gate logits are
           linear in [user; item], so their user halves are the (exact) user representation.

  esm2     ESM2 (post-click decomposition): one shared table, four towers: y1 = P(click),
           y2 = P(DAction | click) (cart, wish), y3 = P(buy | DAction), y4 = P(buy | OAction:
           clicked without DAction); pCVR = y4 (1 - y2) + y3 y2, pCTCVR = y1 pCVR; losses on CTR,
           CTAVR (y1 y2 against click & action) and CTCVR. Needs the action label.

Option (esmm, esmm-ns, mmoe): `ips_weight` > 0 adds ESCM2-IPS's counterfactual CVR loss:
BCE(conversion, pCVR) on clicked impressions weighted by 1 / max(pCTR, ips_clip), pCTR not
differentiated through, averaged over all impressions (an inverse-propensity estimate of the
entire-space CVR loss).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from features.contract import FeatureContract
from training.interactions import (
    AlignedMatches,
    CombinationCounts,
    FieldDots,
    MatchCounts,
    TargetAttention,
)
from training.layers import FieldPooling, Tower, Wide, mixture_head


@dataclasses.dataclass
class ModelConfig:
    contract: dict  # FeatureContract.to_dict(), fitted
    kind: str = "esmm"
    embed_dim: int = 18
    hidden: tuple[int, ...] = (200, 80)
    ips_weight: float = 0.0  # ESCM2-IPS counterfactual CVR loss weight (0: off)
    ips_clip: float = 0.05  # the propensity (pCTR) is clipped from below at this
    experts: int = 4  # mmoe only
    # esmm, esmm-ns, mmoe: weight of BCE(conversion, pCVR) on clicked impressions, added to the
    # entire-space loss (0: ESMM's loss alone)
    cvr_weight: float = 0.0
    # explicit user x item interactions in the towers (esmm, esmm-ns, base, division), read by
    # each tower's first layer beside the item's embeddings: "dot", every user field's pooled
    # vector dotted with every item field's (interactions.py, FieldDots); "attn", every item
    # field against the heaviest members of each user list (TargetAttention); "match", the
    # weight each whole list puts on the item field's own id (MatchCounts); "counts", Ali-CCP's
    # combination fields' counts, their values (CombinationCounts); "aligned", those fields
    # left out, rebuilt as exact matches through a learned translation of ids (AlignedMatches)
    interactions: str = "none"
    attn_k: int = 16  # "attn": the members of each user list its candidates meet
    # a fitted linear term blended with towers' logits (two-tower kinds; layers.py, Wide): an
    # L2 logistic regression per head, blended on the validation split after the towers train
    # (training/wide.py); "ctr": the CTR tower's alone, "all": both towers'
    wide: str = "none"

    def __post_init__(self) -> None:
        check_options(
            self.kind,
            self.ips_weight,
            self.ips_clip,
            self.experts,
            self.cvr_weight,
            self.interactions,
            self.attn_k,
            self.wide,
        )
        if self.interactions == AUTO:
            raise ValueError(
                "a model is built with concrete interactions; training makes `auto` concrete "
                "for its contract (training/interactions.py chosen_interactions)"
            )
        if self.wide == AUTO:
            raise ValueError("a model is built with a concrete wide term (chosen_wide)")
        self.hidden = tuple(self.hidden)


INTERACTIONS = ("none", "dot", "attn", "match", "counts", "aligned")
# training's default: made concrete per contract before a model is built (training/
# interactions.py chosen_interactions), so a checkpoint holds one of INTERACTIONS
AUTO = "auto"
WIDE = ("none", "ctr", "all")


def chosen_wide(choice: str, kind: str) -> str:
    """Training's `--wide` made concrete for a kind: `auto` (the default) blends both towers
    with their regressions where the kind has two towers (above the towers alone on every head
    of every set measured but one, within its spread: docs/model-evidence.md, "Wide & deep"),
    and nothing for the others; any other choice stands as given."""
    if choice != AUTO:
        return choice
    return "all" if issubclass(MODELS[kind], TwoTowers) else "none"


def check_options(
    kind: str,
    ips_weight: float,
    ips_clip: float,
    experts: int,
    cvr_weight: float = 0.0,
    interactions: str = "none",
    attn_k: int = 16,
    wide: str = "none",
) -> None:
    """ValueError naming what is wrong with a kind and its options; training checks them before
    it reads data, a comparison before its first run."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {KINDS}")
    if interactions not in (AUTO, *INTERACTIONS):
        raise ValueError(
            f"unknown interactions {interactions!r}; choose one of {(AUTO, *INTERACTIONS)}"
        )
    if interactions not in (AUTO, "none") and not issubclass(MODELS[kind], TwoTowers):
        raise ValueError(f"interactions apply to {', '.join(TWO_TOWER_KINDS)}, not {kind}")
    if wide not in (AUTO, *WIDE):
        raise ValueError(f"unknown wide {wide!r}; choose one of {(AUTO, *WIDE)}")
    if wide not in (AUTO, "none") and not issubclass(MODELS[kind], TwoTowers):
        raise ValueError(f"the wide term applies to {', '.join(TWO_TOWER_KINDS)}, not {kind}")
    if ips_weight < 0 or not 0 < ips_clip <= 1:
        raise ValueError("ips_weight must be >= 0 and ips_clip in (0, 1]")
    if ips_weight > 0 and not MODELS[kind].takes_ips:
        raise ValueError(f"ESCM2-IPS applies to {', '.join(IPS_KINDS)}, not {kind}")
    if cvr_weight < 0:
        raise ValueError("cvr_weight must be >= 0")
    if cvr_weight > 0 and not MODELS[kind].takes_ips:
        raise ValueError(
            f"the clicked-rows CVR loss applies to {', '.join(IPS_KINDS)} (the others train "
            f"their second tower on their own loss), not {kind}"
        )
    if experts < 1:
        raise ValueError("experts must be >= 1")
    if attn_k < 1:
        raise ValueError("attn_k must be >= 1")


class Logits(NamedTuple):
    ctr: torch.Tensor  # (B,)
    cvr: torch.Tensor  # (B,)
    extra: tuple = ()  # further heads of kinds that have them (esm2: y3, y4)


# ---- the common base -----------------------------------------------------------------------
class RankingModel(nn.Module, abc.ABC):
    """What every kind shares: its config, its embedding tables (`embeddings`, built here before
    any layer of the kind's, so a seed draws the tables first in every kind), the pooled widths
    its first layers read, the forward pass as user_repr then score, and sigmoid probabilities.
    A kind sets the class attributes, builds its layers after this __init__, names a `ctr` and
    a `cvr` module, and defines repr_dim, user_repr, score and its loss."""

    kind: ClassVar[str]
    tables: ClassVar[int] = 1  # 1: one table shared by every tower; 2: the CTR's, the CVR's
    takes_ips: ClassVar[bool] = False  # accepts ESCM2-IPS and the clicked-rows CVR loss
    needs_action: ClassVar[bool] = False  # trains on the post-click action label

    ctr: nn.Module
    cvr: nn.Module

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.kind != self.kind:
            raise ValueError(f"{type(self).__name__} is kind {self.kind!r}, not {cfg.kind!r}")
        self.cfg = cfg
        self.contract = contract = FeatureContract.from_dict(cfg.contract)
        self.embeddings = nn.ModuleList(
            FieldPooling(contract, cfg.embed_dim) for _ in range(self.tables)
        )
        # the pooled user and item embeddings' widths (fields x dim)
        self.user_width = len(contract.side_fields("user")) * cfg.embed_dim
        self.item_width = len(contract.side_fields("item")) * cfg.embed_dim

    @property
    @abc.abstractmethod
    def repr_dim(self) -> int:
        """Width of user_repr's output: what the service caches per user."""

    @abc.abstractmethod
    def user_repr(self, user_ids: torch.Tensor, user_w: torch.Tensor) -> torch.Tensor:
        """(U, user width) -> (U, repr_dim)."""

    @abc.abstractmethod
    def score(
        self,
        user_repr: torch.Tensor,
        user_index: torch.Tensor,
        item_ids: torch.Tensor,
        item_w: torch.Tensor,
    ) -> Logits:
        """The logits of every row; `user_index` picks each row's user in `user_repr`."""

    @abc.abstractmethod
    def loss(
        self,
        logits: Logits,
        click: torch.Tensor,
        conv: torch.Tensor,
        action: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training objective of this kind and its parts; `conv` is conversion-and-click,
        `action` the post-click action and click (read by kinds that need it only)."""

    def forward(
        self,
        user_ids: torch.Tensor,
        user_w: torch.Tensor,
        user_index: torch.Tensor,
        item_ids: torch.Tensor,
        item_w: torch.Tensor,
    ) -> Logits:
        return self.score(self.user_repr(user_ids, user_w), user_index, item_ids, item_w)

    def probabilities(self, logits: Logits) -> dict[str, torch.Tensor]:
        """pctr, pcvr, pctcvr of this kind's heads (pctcvr = pctr * pcvr for every kind)."""
        return probabilities(logits)

    def tower_parameters(self, tower: str) -> list[nn.Parameter]:
        """The parameters one tower owns (its layers and, when not shared, its embedding)."""
        own = list((self.ctr if tower == "ctr" else self.cvr).parameters())
        if len(self.embeddings) == 2:
            own += list(self.embeddings[0 if tower == "ctr" else 1].parameters())
        return own


def probabilities(logits: Logits) -> dict[str, torch.Tensor]:
    pctr, pcvr = torch.sigmoid(logits.ctr), torch.sigmoid(logits.cvr)
    return {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr}


# ---- ESMM and the paper's baselines: a CTR tower and a second tower ------------------------
class TwoTowers(RankingModel):
    """A CTR tower and a second tower (CVR, or CTCVR for DIVISION) over one shared table or one
    table each; the kinds below differ in their loss and how they read the second tower. With
    `cfg.wide`, a fitted linear term is blended with the CTR tower's logit, or with both
    towers' (`wide_heads`: the logistic-regression heads training/wide.py fits for them)."""

    # the logistic-regression head each tower's logit is: the CTR tower's, the second's
    tower_heads: ClassVar[tuple[str, str]] = ("ctr", "cvr")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        # one per table: the CTR tower's and (when it has its own) the second tower's
        self.inter = (
            nn.ModuleList(interaction(cfg, self.contract) for _ in range(self.tables))
            if cfg.interactions != "none"
            else None
        )
        item_in = self.item_width + (self.inter[0].width if self.inter else 0)
        self.ctr = Tower(self.user_width, item_in, cfg.hidden)
        self.cvr = Tower(self.user_width, item_in, cfg.hidden)
        self.wide_heads = {"none": (), "ctr": self.tower_heads[:1], "all": self.tower_heads}[
            cfg.wide
        ]
        # an exact interaction's features (MatchCounts: functions of the ids alone) are inputs
        # of the wide term's regression too, as a spec's crosses would be
        dense = self.inter[0].wide_width if self.inter and self.inter[0].exact else 0
        self.wide = Wide(self.contract, len(self.wide_heads), dense) if self.wide_heads else None

    @property
    def repr_dim(self) -> int:
        # the towers' user halves, (with interactions) each table's user part of them, and
        # (with a wide term) its user sums, one a head
        inter = sum(i.user_width for i in self._cached_inters())
        return 2 * self.cfg.hidden[0] + inter + (self.wide.heads if self.wide else 0)

    def _cached_inters(self) -> list:
        """The interactions whose user parts the representation holds: each table's, but an
        exact one's once (MatchCounts reads ids, not a table: a second tower's would be the
        same floats, cached and searched twice)."""
        inters = list(self.inter or ())
        return inters[:1] if inters and inters[0].exact else inters

    def _reads_wide(self) -> bool:
        """Whether this pass computes the wide term: always outside training (evaluation,
        export: the graph must hold it, and a traced graph cannot branch on the blend's
        values), in training only once the blend reads the regression."""
        return self.wide is not None and (not self.training or self.wide.fitted)

    def wide_inputs(
        self,
        user_ids: torch.Tensor,
        user_w: torch.Tensor,
        user_index: torch.Tensor,
        item_ids: torch.Tensor,
        item_w: torch.Tensor,
    ) -> torch.Tensor | None:
        """The rows' dense inputs of the wide term's regression (an exact interaction's
        features, which need no trained parameter), or None where it reads none."""
        if self.wide is None or self.wide.regression.dense is None:
            return None
        inter = self.inter[0]
        part = inter.user_part(self.embeddings[0], user_ids, user_w, None)
        return inter.wide_features(inter.features(part, user_index, None, item_ids, item_w))

    def _tables(self) -> tuple[FieldPooling, FieldPooling]:
        return self.embeddings[0], self.embeddings[-1]  # (ctr's, cvr's); one object if shared

    def user_repr(self, user_ids: torch.Tensor, user_w: torch.Tensor) -> torch.Tensor:
        """(U, user width) -> (U, repr_dim): [CTR tower's user half; CVR tower's], then with
        interactions each table's user part of them (its pooled fields, or its lists' heaviest
        members), which the scorer meets with the candidate's, and with a wide term its user
        fields' sum per head."""
        ctr_emb, cvr_emb = self._tables()
        u_ctr = ctr_emb(user_ids, user_w, "user")
        u_cvr = u_ctr if cvr_emb is ctr_emb else cvr_emb(user_ids, user_w, "user")
        parts = [self.ctr.user_proj(u_ctr), self.cvr.user_proj(u_cvr)]
        for inter, emb, pooled in zip(
            self._cached_inters(), self.embeddings, (u_ctr, u_cvr), strict=False
        ):
            if inter.user_width:  # (combination counts cache nothing)
                parts.append(inter.user_part(emb, user_ids, user_w, pooled))
        if self._reads_wide():
            parts.append(self.wide.regression.side_sum(user_ids, user_w, "user"))
        elif self.wide:  # training, blend unfitted: the width only, which nothing reads
            parts.append(parts[0].new_zeros((len(user_ids), self.wide.heads)))
        return torch.cat(parts, dim=1)

    def score(
        self,
        user_repr: torch.Tensor,
        user_index: torch.Tensor,
        item_ids: torch.Tensor,
        item_w: torch.Tensor,
    ) -> Logits:
        h = self.cfg.hidden[0]
        r = user_repr[:, : 2 * h].index_select(0, user_index)  # (B, 2h)
        ctr_emb, cvr_emb = self._tables()
        x_ctr = ctr_emb(item_ids, item_w, "item")
        x_cvr = x_ctr if cvr_emb is ctr_emb else cvr_emb(item_ids, item_w, "item")
        raw = None  # the first interaction's features, before their normalisation
        if self.inter:
            pos, inputs = 2 * h, []
            for inter, x in zip(self.inter, (x_ctr, x_cvr), strict=False):
                if raw is None or not inter.exact:  # an exact one's features: computed once
                    width = inter.user_width
                    part = user_repr[:, pos : pos + width] if width else None  # (U, width)
                    pos += width
                    f = inter.features(part, user_index, x, item_ids, item_w)
                raw = f if raw is None else raw
                inputs.append(torch.cat([x, inter.tower_input(f)], dim=1))  # each its own norm
            x_ctr, x_cvr = inputs if len(inputs) == 2 else inputs * 2
        ctr, cvr = self.ctr(r[:, :h], x_ctr), self.cvr(r[:, h : 2 * h], x_cvr)
        if self._reads_wide():
            users = user_repr[:, -self.wide.heads :]  # (U, heads)
            exact = self.wide.regression.dense is not None
            dense = self.inter[0].wide_features(raw) if exact else None
            regressions = self.wide.regression.score(users, user_index, item_ids, item_w, dense)
            towers = torch.stack([ctr, cvr][: self.wide.heads], dim=1)
            mixed = self.wide.mix(towers, regressions)
            ctr = mixed[:, 0]
            cvr = mixed[:, 1] if self.wide.heads == 2 else cvr
        return Logits(ctr, cvr)


def interaction(cfg: ModelConfig, contract: FeatureContract) -> nn.Module:
    """The towers' explicit user x item terms of `cfg.interactions`."""
    if cfg.interactions == "dot":
        return FieldDots(contract, cfg.embed_dim)
    if cfg.interactions == "match":
        return MatchCounts(contract)
    if cfg.interactions == "attn":
        return TargetAttention(contract, cfg.embed_dim, cfg.attn_k)
    if cfg.interactions == "counts":
        return CombinationCounts(contract)
    if cfg.interactions == "aligned":
        return AlignedMatches(contract)
    raise ValueError(f"no interaction module for {cfg.interactions!r}")


class EntireSpace:
    """The entire-space loss (entire_space_loss: ESMM's, with ESCM2-IPS and the clicked-rows
    CVR term it takes) of a kind whose pCTCVR is pCTR x pCVR: ESMM's and MMoE's, one method."""

    takes_ips = True

    def loss(self, logits, click, conv, action=None):
        return entire_space_loss(self.cfg, logits, click, conv)


class ESMM(EntireSpace, TwoTowers):
    kind = "esmm"


class ESMMNS(ESMM):
    """ESMM without the shared embedding."""

    kind = "esmm-ns"
    tables = 2


class Base(TwoTowers):
    kind = "base"
    tables = 2

    def loss(self, logits, click, conv, action=None):
        ctr_loss = F.binary_cross_entropy_with_logits(logits.ctr, click)
        cvr_loss = clicked_cvr_bce(logits, click, conv)
        return ctr_loss + cvr_loss, {"ctr": ctr_loss.item(), "cvr": cvr_loss.item()}


class Division(TwoTowers):
    """The second tower's logit is pCTCVR's own; pCVR is the ratio."""

    kind = "division"
    tables = 2
    tower_heads = ("ctr", "ctcvr")

    def probabilities(self, logits: Logits) -> dict[str, torch.Tensor]:
        # the ratio in log space: dividing two rounded sigmoids loses digits when pCTR is small
        log_ratio = F.logsigmoid(logits.cvr) - F.logsigmoid(logits.ctr)
        pctr, pcvr = torch.sigmoid(logits.ctr), torch.exp(log_ratio.clamp(max=0.0))
        return {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr}

    def loss(self, logits, click, conv, action=None):
        ctr_loss = F.binary_cross_entropy_with_logits(logits.ctr, click)
        ctcvr_loss = F.binary_cross_entropy_with_logits(logits.cvr, conv)
        return ctr_loss + ctcvr_loss, {"ctr": ctr_loss.item(), "ctcvr": ctcvr_loss.item()}


def entire_space_loss(
    cfg: ModelConfig, logits: Logits, click: torch.Tensor, conv: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """ESMM's loss over all impressions (esmm, esmm-ns, mmoe), with ESCM2-IPS when configured."""
    ctr_loss = F.binary_cross_entropy_with_logits(logits.ctr, click)
    ctcvr_loss = ctcvr_bce(logits, conv)
    parts = {"ctr": ctr_loss.item(), "ctcvr": ctcvr_loss.item()}
    total = ctr_loss + ctcvr_loss
    if cfg.cvr_weight > 0:
        cvr = clicked_cvr_bce(logits, click, conv)
        total = total + cfg.cvr_weight * cvr
        parts["cvr"] = cvr.item()
    if cfg.ips_weight > 0:
        ips = ips_cvr_bce(logits, click, conv, cfg.ips_clip)
        total = total + cfg.ips_weight * ips
        parts["cvr_ips"] = ips.item()
    return total, parts


def ctcvr_bce(logits: Logits, target: torch.Tensor) -> torch.Tensor:
    """BCE of pCTCVR = sigmoid(a) * sigmoid(b), from the logits without rounding either factor:
    log p = logsigmoid(a) + logsigmoid(b), log(1 - p) = log(-expm1(log p))."""
    log_p = F.logsigmoid(logits.ctr) + F.logsigmoid(logits.cvr)
    log_p = log_p.clamp(max=-1e-12)  # p == 1 would make log(1 - p) infinite
    log_not_p = torch.log(-torch.expm1(log_p))
    return -(target * log_p + (1.0 - target) * log_not_p).mean()


def clicked_cvr_bce(logits: Logits, click: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
    """BCE(conversion, pCVR) averaged over the clicked rows (BASE's CVR loss); 0 without any."""
    clicked = click > 0
    if not clicked.any():
        return logits.cvr.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits.cvr[clicked], conv[clicked])


def ips_cvr_bce(
    logits: Logits, click: torch.Tensor, conv: torch.Tensor, clip: float
) -> torch.Tensor:
    """ESCM2-IPS: sum over clicked rows of BCE(conv, pCVR) / max(pCTR, clip), over all rows.
    The propensity is detached: this loss teaches the CVR tower, not the CTR tower."""
    propensity = torch.sigmoid(logits.ctr).detach().clamp(min=clip)
    bce = F.binary_cross_entropy_with_logits(logits.cvr, conv, reduction="none")
    return (click * bce / propensity).mean()


# ---- MMoE + ESMM ---------------------------------------------------------------------------
class MMoE(EntireSpace, RankingModel):
    kind = "mmoe"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        e, h = cfg.experts, cfg.hidden[0]
        self.expert_user = nn.Linear(self.user_width, e * h)  # every expert's user half, biases
        self.expert_item = nn.Linear(self.item_width, e * h, bias=False)
        self.gate_user = nn.Linear(self.user_width, 2 * e)  # both tasks' gate logits, user half
        self.gate_item = nn.Linear(self.item_width, 2 * e, bias=False)
        self.ctr, self.cvr = mixture_head(cfg.hidden), mixture_head(cfg.hidden)

    @property
    def repr_dim(self) -> int:
        return self.cfg.experts * (self.cfg.hidden[0] + 2)

    def user_repr(self, user_ids: torch.Tensor, user_w: torch.Tensor) -> torch.Tensor:
        """(U, user width) -> (U, E * hidden[0] + 2E): experts' user halves; gates' user halves."""
        u = self.embeddings[0](user_ids, user_w, "user")
        return torch.cat([self.expert_user(u), self.gate_user(u)], dim=1)

    def score(self, user_repr, user_index, item_ids, item_w) -> Logits:
        e, h = self.cfg.experts, self.cfg.hidden[0]
        r = user_repr.index_select(0, user_index)  # (B, E*h + 2E)
        x = self.embeddings[0](item_ids, item_w, "item")
        experts = torch.relu(r[:, : e * h] + self.expert_item(x)).reshape(-1, e, h)  # (B, E, h)
        gates = torch.softmax((r[:, e * h :] + self.gate_item(x)).reshape(-1, 2, e), -1)
        mixed = torch.bmm(gates, experts)  # (B, 2, h): each task's mixture of experts
        return Logits(self.ctr(mixed[:, 0]).squeeze(-1), self.cvr(mixed[:, 1]).squeeze(-1))


# ---- ESM2 ----------------------------------------------------------------------------------
class ESM2(RankingModel):
    kind = "esm2"
    needs_action = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        # y1 click, y2 DAction | click, y3 buy | DAction, y4 buy | OAction
        self.towers = nn.ModuleList(
            Tower(self.user_width, self.item_width, cfg.hidden) for _ in range(4)
        )
        # registered under both names, so a state_dict holds towers.{0,1}.* and ctr.*, cvr.*
        # (checkpoints have always carried both)
        self.ctr, self.cvr = self.towers[0], self.towers[1]

    @property
    def repr_dim(self) -> int:
        return 4 * self.cfg.hidden[0]

    def user_repr(self, user_ids: torch.Tensor, user_w: torch.Tensor) -> torch.Tensor:
        u = self.embeddings[0](user_ids, user_w, "user")
        return torch.cat([t.user_proj(u) for t in self.towers], dim=1)  # (U, 4h)

    def score(self, user_repr, user_index, item_ids, item_w) -> Logits:
        h = self.cfg.hidden[0]
        r = user_repr.index_select(0, user_index)  # (B, 4h)
        x = self.embeddings[0](item_ids, item_w, "item")
        y = [t(r[:, k * h : (k + 1) * h], x) for k, t in enumerate(self.towers)]
        return Logits(y[0], y[1], (y[2], y[3]))

    def heads(self, logits: Logits) -> tuple[torch.Tensor, ...]:
        return tuple(torch.sigmoid(t) for t in (logits.ctr, logits.cvr, *logits.extra))

    def probabilities(self, logits: Logits) -> dict[str, torch.Tensor]:
        y1, y2, y3, y4 = self.heads(logits)
        pcvr = y4 * (1 - y2) + y3 * y2
        return {"pctr": y1, "pcvr": pcvr, "pctcvr": y1 * pcvr}

    def loss(self, logits, click, conv, action=None):
        if action is None:
            raise ValueError("esm2 needs the post-click action label (action_{split}.csv)")
        y1, y2, y3, y4 = self.heads(logits)
        pctavr = y1 * y2
        pctcvr = y1 * (y4 * (1 - y2) + y3 * y2)
        ctr_loss = F.binary_cross_entropy_with_logits(logits.ctr, click)
        ctavr_loss = _bce_prob(pctavr, action)
        ctcvr_loss = _bce_prob(pctcvr, conv)
        parts = {"ctr": ctr_loss.item(), "ctavr": ctavr_loss.item(), "ctcvr": ctcvr_loss.item()}
        return ctr_loss + ctavr_loss + ctcvr_loss, parts


def _bce_prob(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE of a product of probabilities (no single logit exists), clamped away from 0 and 1."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(target * torch.log(p) + (1 - target) * torch.log1p(-p)).mean()


# ---- the kinds -----------------------------------------------------------------------------
MODELS: dict[str, type[RankingModel]] = {
    cls.kind: cls for cls in (ESMM, ESMMNS, Base, Division, MMoE, ESM2)
}
KINDS = tuple(MODELS)
IPS_KINDS = tuple(k for k, cls in MODELS.items() if cls.takes_ips)
TWO_TOWER_KINDS = tuple(k for k, cls in MODELS.items() if issubclass(cls, TwoTowers))


def build_model(cfg: ModelConfig) -> RankingModel:
    """The module of `cfg.kind`."""
    return MODELS[cfg.kind](cfg)
