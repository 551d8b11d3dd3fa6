"""The bounds every value that reaches the model must meet, whoever brings it: a request
(service/request.py), a stored user record (service/encoding.py's stored users), the item table
(features/item_source.py, training/tables.py) and the training tables. Defined once, here, so
stored data is never checked more loosely than a request: a value a request would be refused
cannot enter a score, or a cached vector, from a store.

- a weight scales a float32 embedding summed over a field's ids: in (0, MAX_WEIGHT] (positive,
  so a mean pool always divides by a positive sum);
- a price feeds `price^c` of the fusion: in [0, MAX_PRICE];
- a number (a numeric feature or attribute) picks a bucket as float32: at most MAX_NUMBER in
  size (float32 holds it);
- an integer id is an int64: in [INT64_MIN, INT64_MAX].
"""

from __future__ import annotations

MAX_WEIGHT = 1e6
MAX_PRICE = 1e9
MAX_NUMBER = 1e18
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
