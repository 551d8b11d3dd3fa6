"""features/user_table.py: the embedded user store's file holds the records Redis would, is
found by key, and a damaged or foreign file is refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from features import users
from features.user_table import UserTable, UserTableError


def test_records_round_trip_and_are_found_by_key(tmp_path):
    records = [(7, {"a": ([1, 2], [3.0, 1.0])}), (3, {"b": ([5], [1.0])}), (7, {"a": ([9], [2.0])})]
    table = UserTable.from_records(records, source="test")
    path = tmp_path / "users.npz"
    table.save(path)
    again = UserTable.load(path)
    assert again.keys.tolist() == [3, 7] and again.digest == table.digest
    digest, blob = again.get(7)
    assert users.decode(blob, expected=digest) == {"a": ([9], [2.0])}  # the later record wins
    assert (digest, blob) == users.encode({"a": ([9], [2.0])})  # what Redis would hold
    assert again.get(4) is None and again.get(100) is None


def test_a_damaged_or_foreign_file_is_refused(tmp_path):
    path = tmp_path / "users.npz"
    UserTable.from_records([(1, {"a": ([1], [1.0])})]).save(path)
    ok = dict(np.load(path))
    ok["blob"] = ok["blob"].copy()
    ok["blob"][2] ^= 1
    np.savez(tmp_path / "edited.npz", **ok)
    with pytest.raises(UserTableError, match="does not match its digest"):
        UserTable.load(tmp_path / "edited.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserTableError, match="unreadable user table"):
        UserTable.load(tmp_path / "junk.npz")
    with pytest.raises(UserTableError, match="unreadable user table"):
        UserTable.load(tmp_path / "missing.npz")
