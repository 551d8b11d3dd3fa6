"""What training and serving share, numpy only: the feature contract (contract.py), post-hoc
calibration (calibration.py) and the definition of equal scores (parity.py)."""

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
