"""The generator's parameters (everything but size and seed) and its named regimes."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Params:
    """Everything but size and seed; written to generator.json."""

    # populations
    categories: int = 600
    shops: int = 800
    brands: int = 2500
    intents: int = 2000
    scenes: int = 4
    user_classes: int = 12  # field 121
    home_categories: int = 3  # categories a user cares most about
    impressions_per_user: int = 60
    impressions_per_item: int = 40
    min_users: int = 200
    min_items: int = 500
    item_zipf: float = 0.9
    user_zipf: float = 0.6
    category_zipf: float = 1.0
    targeted_share: float = 0.35  # impressions drawn from the user's home categories
    home_draw_share: float = 0.3  # behaviour-list draws from the user's home categories
    session_median: float = 15.0
    # behaviour list lengths: (field, median, log-sigma, min, max)
    list_lengths: tuple = (
        ("109_14", 55, 0.45, 20, 150),
        ("110_14", 140, 0.5, 50, 400),
        ("127_14", 95, 0.5, 30, 300),
        ("150_14", 85, 0.5, 30, 250),
    )
    field_126_missing: float = 0.3
    # click effects
    target_ctr: float = 0.05
    sd_item_attract: float = 0.35
    sd_category_appeal: float = 0.55
    w_category_affinity: float = 0.45
    sd_user_class: float = 0.5
    sd_user_propensity: float = 0.15
    w_intent: float = 0.25
    sd_scene: float = 0.45
    # conversion effects
    target_cvr: float = 0.15
    sd_item_quality: float = 0.45
    quality_attract_corr: float = -0.3
    sd_shop_reputation: float = 0.6
    w_brand_affinity: float = 0.6
    w_price_fit: float = 0.8
    w_126: float = 0.2
    w_conv_relevance: float = 0.0  # weight of the click's relevance in the conversion logit
    sd_brand_quality: float = 0.0  # a brand's own conversion effect (216), the same for every user
    # conversion logit per standard deviation of an item's log price above its category's
    # (the item table's `price`; dearer than its peers converts less at w > 0)
    w_item_price: float = 0.0
    # the optional post-click action label (cart / wish: ESM2's DAction), drawn for clicked
    # impressions from its own random stream, so the other files are the same with or without it
    action_given_buy: float = 0.6
    action_given_no_buy: float = 0.12


# Named regimes for the model comparison (`--preset`; `--set` applies on top).
PRESETS: dict[str, dict[str, float]] = {
    # the default click model, conversions scarcer: the tasks depend on different factors
    "independent": {"target_cvr": 0.05},
    # the tasks share factors (items that draw clicks convert, relevant impressions convert)
    # and clicks are scarce per item: the sample selection bias and data sparsity of the paper
    "shared": {
        "target_ctr": 0.02,
        "target_cvr": 0.15,
        "w_conv_relevance": 1.0,
        "quality_attract_corr": 0.8,
        "sd_item_quality": 1.0,
        "sd_item_attract": 1.0,
        "impressions_per_item": 200,
    },
    # ids as sparse as real logs (an item seen ~25 times, once or twice clicked) and conversion
    # driven by the item's own attributes (its quality, shop, brand and price), additively and
    # by nothing that drives clicks: the regime where a linear model is hard to beat
    "sparse": {
        "impressions_per_item": 25,
        "target_cvr": 0.1,
        "quality_attract_corr": 0.0,
        "sd_item_quality": 0.8,
        "sd_brand_quality": 0.5,
        "w_item_price": 0.5,
        "w_brand_affinity": 0.0,
        "w_price_fit": 0.0,
        "w_126": 0.0,
    },
}


def with_overrides(p: Params, overrides: dict[str, float]) -> Params:
    """`p` with numeric fields replaced (cast to the field's type); an unknown name is refused."""
    numeric = {
        f.name: type(getattr(p, f.name))
        for f in dataclasses.fields(p)
        if isinstance(getattr(p, f.name), int | float)
    }
    unknown = set(overrides) - set(numeric)
    if unknown:
        raise ValueError(
            f"unknown generator parameters {sorted(unknown)}; numeric ones: {sorted(numeric)}"
        )
    return dataclasses.replace(p, **{k: numeric[k](v) for k, v in overrides.items()})
