"""The train/serve feature contract (numpy only)."""

from features.contract import (
    ALL_FIELDS,
    COMBINATION_FIELDS,
    CONTEXT_FIELDS,
    ITEM_FIELDS,
    USER_FIELDS,
    FeatureContract,
    Field,
    field_side,
    truncate,
)

__all__ = [
    "ALL_FIELDS",
    "COMBINATION_FIELDS",
    "CONTEXT_FIELDS",
    "ITEM_FIELDS",
    "USER_FIELDS",
    "FeatureContract",
    "Field",
    "field_side",
    "truncate",
]
