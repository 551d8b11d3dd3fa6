import numpy as np
import pytest
import torch
import torch.nn.functional as F

from features import spec as S
from features.contract import ALL_FIELDS, FeatureContract
from training.export import random_case
from training.model import (
    ESM2,
    ESMM,
    ESMMNS,
    KINDS,
    MODELS,
    Base,
    Division,
    Logits,
    MMoE,
    ModelConfig,
    RankingModel,
    build_model,
    ctcvr_bce,
    probabilities,
)


@pytest.fixture(scope="module")
def contract() -> FeatureContract:
    return FeatureContract.default(max_len={"110_14": 40, "127_14": 30}).fit_buckets(
        {n: 300 for n in ALL_FIELDS}
    )


# A shop's spec with shared embedding groups (recent categories and the item's category, recent
# brands and its brand), the pairs target attention reads; the shops list shares with nothing.
SPEC = """\
keys: {user: user_id, item: item_id, request: request_id}
labels: {click: click, conversion: conversion}
tables:
  events: {train: events_train.parquet, test: events_test.parquet}
features:
  - {name: user_id, side: user, kind: id}
  - {name: gender, side: user, kind: id}
  - {name: recent_categories, side: user, kind: ids, embedding: category, max_len: 20}
  - {name: recent_shops, side: user, kind: ids, max_len: 12}
  - {name: recent_brands, side: user, kind: ids, embedding: brand, max_len: 6}
  - {name: item_id, side: item, kind: id}
  - {name: category, side: item, kind: id, embedding: category}
  - {name: brand, side: item, kind: id, embedding: brand}
  - {name: scene, side: context, kind: id}
"""


@pytest.fixture(scope="module")
def spec_contract() -> FeatureContract:
    tables = ("user_id", "gender", "category", "recent_shops", "brand", "item_id", "scene")
    return FeatureContract.from_spec(S.loads(SPEC), {}).fit_buckets({t: 300 for t in tables})


def inputs(contract, n=64, seed=0) -> dict[str, torch.Tensor]:
    case = random_case(contract, n, np.random.default_rng(seed))
    return {
        "user_ids": torch.from_numpy(case["user_ids"]),
        "user_w": torch.from_numpy(case["user_weights"]),
        "user_index": torch.from_numpy(case["user_index"]),
        "item_ids": torch.from_numpy(case["item_ids"]),
        "item_w": torch.from_numpy(case["item_weights"]),
    }


def build(contract, kind: str, **options) -> ESMM:
    torch.manual_seed(0)
    return build_model(ModelConfig(contract.to_dict(), kind=kind, **options))


# the two-tower kinds' options that change what the user representation carries (attention
# reads a spec's shared groups: its contract)
TOWER_OPTIONS = {
    "plain": ("esmm", {}),
    "dot": ("esmm", {"interactions": "dot"}),
    "attn": ("esmm", {"interactions": "attn", "attn_k": 4}),
    "base-attn": ("base", {"interactions": "attn", "attn_k": 8}),
    "division-dot": ("division", {"interactions": "dot"}),
    "wide": ("esmm", {"wide": "all"}),
    "base-attn-wide-ctr": ("base", {"interactions": "attn", "attn_k": 4, "wide": "ctr"}),
    "match": ("esmm", {"interactions": "match"}),
    "ns-match-wide": ("esmm-ns", {"interactions": "match", "wide": "all"}),
    # Ali-CCP's combination fields' counts: nothing in the user representation
    "counts": ("esmm", {"interactions": "counts"}),
    "ns-counts-wide": ("esmm-ns", {"interactions": "counts", "wide": "all"}),
}


def variant_model(request, variant: str):
    kind, options = TOWER_OPTIONS[variant]
    fixture = "spec_contract" if options.get("interactions") in ("attn", "match") else "contract"
    contract = request.getfixturevalue(fixture)
    m = build(contract, kind, **options)
    if m.wide is not None:  # a fitted wide term is not zero: give it weights to carry
        with torch.no_grad():
            m.wide.regression.weights.table.weight[1:].normal_()
            m.wide.regression.bias.copy_(torch.tensor([-2.0, 0.5])[: m.wide.heads])
            m.wide.blend.copy_(BLEND[:, : m.wide.heads])
            if m.wide.regression.dense is not None:  # it reads exact matches too
                m.wide.regression.dense.normal_()
    return m, contract


# a fitted blend, per head: a x tower + b x regression + c
BLEND = torch.tensor([[0.6, 0.9], [0.4, 0.3], [0.1, -0.2]])


def test_esmm_towers_share_only_the_embedding(contract):
    m = build(contract, "esmm")
    ctr = {id(p) for p in m.ctr.parameters()}
    cvr = {id(p) for p in m.cvr.parameters()}
    assert ctr and cvr and not ctr & cvr
    assert len(m.embeddings) == 1
    # every parameter belongs to exactly one of: the shared table, the CTR tower, the CVR tower
    table = {id(p) for p in m.embeddings.parameters()}
    assert {id(p) for p in m.parameters()} == ctr | cvr | table
    assert len(ctr) + len(cvr) + len(table) == len(list(m.parameters()))


@pytest.mark.parametrize("kind", ["esmm-ns", "base"])
def test_baselines_share_nothing(contract, kind):
    m = build(contract, kind)
    ctr = {id(p) for p in m.tower_parameters("ctr")}
    cvr = {id(p) for p in m.tower_parameters("cvr")}
    assert not ctr & cvr and ctr | cvr == {id(p) for p in m.parameters()}


def test_cvr_loss_reaches_only_the_cvr_tower_in_base(contract):
    m = build(contract, "base")
    x = inputs(contract)
    logits = m(**x)
    F.binary_cross_entropy_with_logits(logits.cvr, torch.ones(64)).backward()
    assert not any(has_grad(p) for p in m.tower_parameters("ctr"))
    assert all(has_grad(p) for p in m.tower_parameters("cvr"))


def has_grad(p: torch.nn.Parameter) -> bool:
    if p.grad is None:
        return False
    g = p.grad.to_dense() if p.grad.is_sparse else p.grad
    return bool(g.abs().sum() > 0)


@pytest.mark.parametrize("variant", list(TOWER_OPTIONS))
def test_split_scoring_equals_per_row_scoring(request, variant):
    m, contract = variant_model(request, variant)
    m.eval()
    x = inputs(contract, n=33)
    with torch.no_grad():
        split = m(**x)
        idx = x["user_index"]
        tiled = m(
            x["user_ids"][idx], x["user_w"][idx], torch.arange(33), x["item_ids"], x["item_w"]
        )
    torch.testing.assert_close(split.ctr, tiled.ctr, atol=1e-6, rtol=0)
    torch.testing.assert_close(split.cvr, tiled.cvr, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kind", ["esmm", "esmm-ns", "dot", "base-attn", "wide", "ns-match-wide", "ns-counts-wide"]
)
def test_training_pooling_equals_the_exported_pooling(request, contract, kind):
    """Training pools with embedding_bag, export with gather + masked sum: same function (and
    target attention gathers members per row in training, multiplies every user's in the
    graph)."""
    m = variant_model(request, kind)[0] if kind in TOWER_OPTIONS else build(contract, kind)
    contract = FeatureContract.from_dict(m.cfg.contract)
    with torch.no_grad():
        for t in m.embeddings:
            t.table.weight.normal_()
            t.table.weight[0].zero_()
    x = inputs(contract, n=50, seed=3)
    with torch.no_grad():
        m.train()
        for norm in m.modules():  # batch statistics are training's own, not the pooling's
            if isinstance(norm, torch.nn.BatchNorm1d):
                norm.eval()
        bag = m(**x)
        gathered = m.eval()(**x)
    torch.testing.assert_close(bag.ctr, gathered.ctr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bag.cvr, gathered.cvr, atol=1e-5, rtol=1e-5)


def test_target_attention_counts_the_items_id_among_the_users_heaviest_members(spec_contract):
    """Per (list, item field) pair of one embedding group, the weighted sum over the list's k
    heaviest members of sigmoid(scale * cos + shift): the item's own row (cosine 1) counts with
    its weight, other rows (cosine 0 here) next to nothing; a member past the k heaviest is not
    seen; equal weights go to the earlier column, as in the exported graph."""
    c = spec_contract
    m = build(c, "esmm", interactions="attn", attn_k=2).eval()
    att = m.inter[0]
    user_cols = {f.name: cols for f, cols in c.columns("user")}
    item_cols = {f.name: cols for f, cols in c.columns("item")}
    field = {f.name: f for f in c.fields}
    cat = field["category"].offset + 1  # three rows of the category table
    rows = [cat, cat + 1, cat + 2]
    with torch.no_grad():
        table = m.embeddings[0].table.weight
        for j, r in enumerate(rows):  # orthogonal: the cosine is 1 or 0
            table[r] = 0.0
            table[r, j] = 1.0 + j
    user_ids = torch.zeros(2, c.width("user"), dtype=torch.int64)
    user_w = torch.zeros(2, c.width("user"))
    first = user_cols["recent_categories"].start
    user_ids[:, first : first + 3] = torch.tensor(rows)
    user_w[0, first : first + 3] = torch.tensor([1.0, 5.0, 3.0])  # rows[0] is not among the 2
    user_w[1, first : first + 3] = torch.tensor([2.0, 2.0, 2.0])  # a tie: the first two
    item_ids = torch.zeros(4, c.width("item"), dtype=torch.int64)
    item_w = torch.zeros(4, c.width("item"))
    item_ids[:, item_cols["category"].start] = torch.tensor([rows[1], rows[0], rows[2], rows[2]])
    item_w[:, item_cols["category"].start] = 1.0
    user_index = torch.tensor([0, 0, 0, 1])
    with torch.no_grad():
        users = att.user_part(m.embeddings[0], user_ids, user_w, None)
        x = m.embeddings[0](item_ids, item_w, "item")
        got = att.features(users, user_index, x, item_ids)
    pair = att.pairs.index((0, [f.name for f in c.side_fields("item")].index("category")))
    hit, miss = torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(torch.tensor(-8.0))
    want = torch.stack(
        [
            5 * hit + 3 * miss,  # its category is the heaviest member
            8 * miss,  # its category is the lightest, past k = 2
            5 * miss + 3 * hit,
            4 * miss,  # rows[2] lost the tie to rows[0] and rows[1]
        ]
    )
    torch.testing.assert_close(got[:, pair], want)
    assert len(att.pairs) == 2  # categories and brands; the shops list shares no table
    assert att.user_width == 2 * (2 * m.cfg.embed_dim + 2)


def test_target_attention_needs_a_shared_embedding_group(contract):
    with pytest.raises(ValueError, match="needs a user list and an item field in one embedding"):
        build(contract, "esmm", interactions="attn")


def test_ctcvr_bce_matches_the_naive_formula_and_stays_finite():
    a, b = torch.randn(200) * 3, torch.randn(200) * 3
    y = (torch.rand(200) < 0.3).float()
    p = torch.sigmoid(a) * torch.sigmoid(b)
    naive = F.binary_cross_entropy(p.double(), y.double())
    torch.testing.assert_close(ctcvr_bce(Logits(a, b), y).double(), naive, atol=1e-5, rtol=1e-5)
    extreme = torch.tensor([-200.0, -50.0, 0.0, 50.0, 200.0])
    for target in (torch.zeros(5), torch.ones(5)):
        a = extreme.clone().requires_grad_()
        loss = ctcvr_bce(Logits(a, extreme.flip(0)), target)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(a.grad).all()


def test_pctcvr_is_the_product(contract):
    m = build(contract, "esmm").eval()
    with torch.no_grad():
        p = probabilities(m(**inputs(contract)))
    torch.testing.assert_close(p["pctcvr"], p["pctr"] * p["pcvr"], atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["esmm", "esmm-ns", "base"])
def test_loss_is_finite_and_falls(contract, kind):
    m = build(contract, kind).train()
    x = inputs(contract, n=256, seed=5)
    g = torch.Generator().manual_seed(0)
    click = (torch.rand(256, generator=g) < 0.3).float()
    conv = click * (torch.rand(256, generator=g) < 0.5).float()
    from training.optim import make_optimizers

    opts = make_optimizers(m, 1e-3, 1e-2)
    losses = []
    for _ in range(30):
        loss, parts = m.loss(m(**x), click, conv)
        assert torch.isfinite(loss) and all(np.isfinite(v) for v in parts.values())
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_unknown_kind_is_refused(contract):
    with pytest.raises(ValueError, match="unknown model kind"):
        ModelConfig(contract.to_dict(), kind="dnn")


def test_interactions_are_refused_where_they_do_not_apply(contract):
    with pytest.raises(ValueError, match="unknown interactions 'cross'"):
        ModelConfig(contract.to_dict(), kind="esmm", interactions="cross")
    for kind in ("mmoe", "esm2"):
        with pytest.raises(ValueError, match=f"apply to esmm, esmm-ns, base, division, not {kind}"):
            ModelConfig(contract.to_dict(), kind=kind, interactions="dot")
        with pytest.raises(ValueError, match="wide term applies to esmm, esmm-ns, base, div"):
            ModelConfig(contract.to_dict(), kind=kind, wide="ctr")
    with pytest.raises(ValueError, match="unknown wide 'yes'"):
        ModelConfig(contract.to_dict(), kind="esmm", wide="yes")


def test_field_dots_are_every_user_field_dotted_with_every_item_field(contract):
    """What the towers read beside the item's embeddings: u_f . x_g for every field pair, from
    the user representation's pooled fields (so the user part is still once per user)."""
    m = build(contract, "esmm", interactions="dot").eval()
    x = inputs(contract, n=9, seed=4)
    fu, fi = len(contract.side_fields("user")), len(contract.side_fields("item"))
    d = m.cfg.embed_dim
    with torch.no_grad():
        r = m.user_repr(x["user_ids"], x["user_w"])
        u = m.embeddings[0](x["user_ids"], x["user_w"], "user")
        assert m.repr_dim == r.shape[1] == 2 * m.cfg.hidden[0] + fu * d
        torch.testing.assert_close(r[:, 2 * m.cfg.hidden[0] :], u)
        item = m.embeddings[0](x["item_ids"], x["item_w"], "item")
        rows = u[x["user_index"]]
        dots = m.inter[0].features(u, x["user_index"], item, x["item_ids"])
    assert dots.shape == (9, fu * fi)
    for f, g in [(0, 0), (fu - 1, fi - 1), (3, 2)]:
        want = (rows[:, f * d : (f + 1) * d] * item[:, g * d : (g + 1) * d]).sum(1)
        torch.testing.assert_close(dots[:, f * fi + g], want)


def test_division_divides_its_ctcvr_net_by_its_ctr_net(contract):
    m = build(contract, "division")
    assert len(m.embeddings) == 2  # two separate nets
    logits = m(**inputs(contract))
    p = m.probabilities(logits)
    pctr, pctcvr_net = torch.sigmoid(logits.ctr), torch.sigmoid(logits.cvr)
    assert torch.allclose(p["pcvr"], torch.clamp(pctcvr_net / pctr, max=1.0), atol=1e-6)
    assert torch.allclose(p["pctcvr"], p["pctr"] * p["pcvr"])
    assert float(p["pcvr"].detach().max()) <= 1.0
    click, conv = torch.ones(64), torch.zeros(64)
    loss, parts = m.loss(logits, click, conv)
    want = F.binary_cross_entropy_with_logits(logits.ctr, click)
    want = want + F.binary_cross_entropy_with_logits(logits.cvr, conv)
    assert torch.allclose(loss, want) and set(parts) == {"ctr", "ctcvr"}


def test_escm2_ips_weights_clicked_rows_by_inverse_propensity_and_spares_the_ctr_tower(contract):
    torch.manual_seed(0)
    m = ESMM(ModelConfig(contract.to_dict(), kind="esmm", ips_weight=1.0, ips_clip=0.05))
    logits = m(**inputs(contract))
    click = (torch.arange(64) % 2).float()
    conv = (torch.arange(64) % 4 == 1).float()
    _, parts = m.loss(logits, click, conv)
    prop = torch.sigmoid(logits.ctr).clamp(min=0.05)
    bce = F.binary_cross_entropy_with_logits(logits.cvr, conv, reduction="none")
    assert parts["cvr_ips"] == pytest.approx(float((click * bce / prop).mean()), rel=1e-5)
    from training.model import ips_cvr_bce

    m.zero_grad()
    ips_cvr_bce(m(**inputs(contract)), click, conv, 0.05).backward()
    assert not any(has_grad(p) for p in m.ctr.parameters())  # the propensity is detached
    assert any(has_grad(p) for p in m.cvr.parameters())
    with pytest.raises(ValueError, match="ESCM2-IPS applies"):
        ModelConfig(contract.to_dict(), kind="base", ips_weight=1.0)


def test_clicked_cvr_loss_is_the_entire_space_loss_plus_bce_on_clicked_rows_only(contract):
    torch.manual_seed(0)
    plain = ESMM(ModelConfig(contract.to_dict(), kind="esmm"))
    m = ESMM(ModelConfig(contract.to_dict(), kind="esmm", cvr_weight=0.5))
    m.load_state_dict(plain.state_dict())
    logits = m(**inputs(contract))
    click = (torch.arange(64) % 2).float()
    conv = (torch.arange(64) % 4 == 1).float()
    loss, parts = m.loss(logits, click, conv)
    base, _ = plain.loss(logits, click, conv)
    clicked = click > 0
    want = F.binary_cross_entropy_with_logits(logits.cvr[clicked], conv[clicked])
    assert parts["cvr"] == pytest.approx(float(want), rel=1e-5)
    assert float(loss) == pytest.approx(float(base + 0.5 * want), rel=1e-5)
    # unclicked rows' CVR logits play no part in it
    changed = logits.cvr.detach().clone()
    changed[~clicked] += 5.0
    _, moved = m.loss(logits._replace(cvr=changed), click, conv)
    assert moved["cvr"] == pytest.approx(parts["cvr"], rel=1e-6)
    _, none = m.loss(logits, torch.zeros(64), torch.zeros(64))
    assert none["cvr"] == 0.0
    with pytest.raises(ValueError, match="clicked-rows CVR loss applies"):
        ModelConfig(contract.to_dict(), kind="base", cvr_weight=1.0)
    with pytest.raises(ValueError, match="cvr_weight must be"):
        ModelConfig(contract.to_dict(), kind="esmm", cvr_weight=-1.0)


def test_mmoe_user_representation_is_exact_and_gates_mix_experts(contract):
    torch.manual_seed(0)
    m = build_model(ModelConfig(contract.to_dict(), kind="mmoe", experts=3)).eval()
    x = inputs(contract)
    r = m.user_repr(x["user_ids"], x["user_w"])
    assert r.shape[1] == m.repr_dim == 3 * (200 + 2)
    # the split path equals the whole computation done per row on [user; item]
    u = m.embeddings[0](x["user_ids"], x["user_w"], "user").index_select(0, x["user_index"])
    i = m.embeddings[0](x["item_ids"], x["item_w"], "item")
    ui = torch.cat([u, i], 1)
    w_exp = torch.cat([m.expert_user.weight, m.expert_item.weight], 1)
    w_gate = torch.cat([m.gate_user.weight, m.gate_item.weight], 1)
    experts = torch.relu(ui @ w_exp.T + m.expert_user.bias).reshape(-1, 3, 200)
    gates = torch.softmax((ui @ w_gate.T + m.gate_user.bias).reshape(-1, 2, 3), -1)
    mixed = torch.einsum("bte,beh->bth", gates, experts)
    got = m(**x)
    assert torch.allclose(got.ctr, m.ctr(mixed[:, 0]).squeeze(-1), atol=1e-5)
    assert torch.allclose(got.cvr, m.cvr(mixed[:, 1]).squeeze(-1), atol=1e-5)
    assert not torch.allclose(gates[:, 0], gates[:, 1])  # one gate per task


def test_esm2_decomposes_cvr_over_the_post_click_action(contract):
    m = build(contract, "esm2")
    x = inputs(contract)
    logits = m(**x)
    y1, y2, y3, y4 = (torch.sigmoid(t) for t in (logits.ctr, logits.cvr, *logits.extra))
    p = m.probabilities(logits)
    assert torch.allclose(p["pcvr"], y4 * (1 - y2) + y3 * y2)
    assert torch.allclose(p["pctcvr"], y1 * p["pcvr"])
    assert m.user_repr(x["user_ids"], x["user_w"]).shape[1] == m.repr_dim == 4 * 200
    click = (torch.arange(64) % 2).float()
    action, conv = click * (torch.arange(64) % 4 == 1), click * (torch.arange(64) % 8 == 1)
    _, parts = m.loss(logits, click, conv, action)
    assert set(parts) == {"ctr", "ctavr", "ctcvr"}
    ctavr = -(action * torch.log(y1 * y2) + (1 - action) * torch.log1p(-y1 * y2)).mean()
    assert parts["ctavr"] == pytest.approx(float(ctavr), rel=1e-4)
    with pytest.raises(ValueError, match="action label"):
        m.loss(logits, click, conv)


@pytest.mark.parametrize("kind", ["mmoe", "esm2"])
def test_single_table_kinds_give_each_tower_only_its_own_head(contract, kind):
    m = build(contract, kind)
    ctr = {id(p) for p in m.tower_parameters("ctr")}
    cvr = {id(p) for p in m.tower_parameters("cvr")}
    table = {id(p) for p in m.embeddings.parameters()}
    assert ctr and cvr and not ctr & cvr and not (ctr | cvr) & table
    assert ctr == {id(p) for p in m.ctr.parameters()}


def test_one_class_per_kind_each_built_through_the_common_base(contract):
    classes = {"esmm": ESMM, "esmm-ns": ESMMNS, "base": Base, "division": Division}
    classes |= {"mmoe": MMoE, "esm2": ESM2}
    assert KINDS == ("esmm", "esmm-ns", "base", "division", "mmoe", "esm2")
    assert classes == MODELS
    for kind, cls in classes.items():
        m = build(contract, kind)
        assert type(m) is cls and cls.kind == kind and m.cfg.kind == kind
        assert len(m.embeddings) == cls.tables  # the base's __init__ built them
        assert m.user_width == 18 * len(contract.side_fields("user"))
        assert m.item_width == 18 * len(contract.side_fields("item"))
    with pytest.raises(TypeError):
        RankingModel(ModelConfig(contract.to_dict()))  # abstract: a kind defines the rest
    with pytest.raises(ValueError, match="is kind 'esmm', not 'mmoe'"):
        ESMM(ModelConfig(contract.to_dict(), kind="mmoe"))


TOWER = ["user_proj.weight", "user_proj.bias", "item_proj.weight"]
TOWER += ["head.1.weight", "head.1.bias", "head.3.weight", "head.3.bias"]
HEAD = ["0.weight", "0.bias", "2.weight", "2.bias"]


def keys(prefix: str, names: list[str]) -> list[str]:
    return [f"{prefix}.{n}" for n in names]


STATE_KEYS = {  # as checkpoints have always held them: old runs must still load
    "esmm": ["embeddings.0.table.weight", *keys("ctr", TOWER), *keys("cvr", TOWER)],
    "esmm-ns": [
        "embeddings.0.table.weight",
        "embeddings.1.table.weight",
        *keys("ctr", TOWER),
        *keys("cvr", TOWER),
    ],
    "mmoe": [
        "embeddings.0.table.weight",
        "expert_user.weight",
        "expert_user.bias",
        "expert_item.weight",
        "gate_user.weight",
        "gate_user.bias",
        "gate_item.weight",
        *keys("ctr", HEAD),
        *keys("cvr", HEAD),
    ],
    "esm2": [
        "embeddings.0.table.weight",
        *(k for t in range(4) for k in keys(f"towers.{t}", TOWER)),
        *keys("ctr", TOWER),  # towers 0 and 1, registered under both names
        *keys("cvr", TOWER),
    ],
}
STATE_KEYS["base"] = STATE_KEYS["division"] = STATE_KEYS["esmm-ns"]


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_keys_are_those_checkpoints_carry(contract, kind):
    assert list(build(contract, kind).state_dict()) == STATE_KEYS[kind]


@pytest.mark.parametrize(("kind", "wide"), [("esmm", "all"), ("division", "all"), ("esmm", "ctr")])
def test_the_wide_term_blends_a_linear_model_per_head_with_the_towers(request, kind, wide):
    """The wide term's regression is the sum of its weights over a row's features (user and
    item, each entry times its pooling weight) plus a bias, per head; each head's logit is
    a x tower + b x regression + c ("ctr": the CTR tower's alone); the user side's sums travel
    in the last floats of the user representation, one a head."""
    contract = request.getfixturevalue("contract")
    m = build(contract, kind, wide=wide)
    heads = m.wide.heads
    assert heads == (1 if wide == "ctr" else 2)
    assert m.wide_heads == (("ctr", "ctcvr") if kind == "division" else ("ctr", "cvr"))[:heads]
    with torch.no_grad():
        m.wide.regression.weights.table.weight[1:].normal_()
        m.wide.regression.bias.copy_(torch.tensor([-2.0, 0.5])[:heads])
    m.eval()
    x = inputs(contract, n=21, seed=5)
    w = m.wide.regression.weights.table.weight
    idx = x["user_index"]
    regression = (
        (w[x["user_ids"]] * x["user_w"].unsqueeze(-1)).sum(1)[idx]
        + (w[x["item_ids"]] * x["item_w"].unsqueeze(-1)).sum(1)
        + m.wide.regression.bias
    )  # (B, heads)
    with torch.no_grad():
        towers = m(**x)  # an unfitted blend (1, 0, 0): the towers alone
        m.wide.blend.copy_(BLEND[:, :heads])
        mixed = m(**x)
        repr_ = m.user_repr(x["user_ids"], x["user_w"])
    assert repr_.shape[1] == m.repr_dim == 2 * m.cfg.hidden[0] + heads
    (a, b, c) = BLEND[:, 0]
    want = a * towers.ctr + b * regression[:, 0] + c
    torch.testing.assert_close(mixed.ctr, want, atol=1e-5, rtol=1e-5)
    if heads == 2:
        (a, b, c) = BLEND[:, 1]
        want = a * towers.cvr + b * regression[:, 1] + c
        torch.testing.assert_close(mixed.cvr, want, atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(mixed.cvr, towers.cvr)


def test_an_unfitted_wide_term_leaves_the_towers_to_train_alone(request, contract):
    """Until training/wide.py fits it, a wide model's logits are its towers' (the same
    weights as a plain model's, the same draws), and nothing of the wide term trains."""
    from training.optim import make_optimizers, step

    m, plain = build(contract, "esmm", wide="all"), build(contract, "esmm")
    assert not m.wide.fitted  # the regression is not even computed yet
    x = inputs(contract, n=30, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(**x).ctr, plain.eval()(**x).ctr)
    fixed = list(m.wide.parameters())
    before = [p.detach().clone() for p in fixed]
    towers = m.ctr.head[-1].weight.detach().clone()
    opts = make_optimizers(m, 1e-2, 1e-2)
    m.train()
    for seed in range(3):
        logits = m(**inputs(contract, n=40, seed=seed))
        step(opts, F.binary_cross_entropy_with_logits(logits.ctr, torch.ones(40)))
    assert all(torch.equal(a, b) for a, b in zip(before, fixed, strict=True))
    assert not torch.equal(towers, m.ctr.head[-1].weight)
