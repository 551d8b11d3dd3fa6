"""Load the online user feature store (features/users.py), for ranking by ids: into Redis, or
into the embedded store's file (features/user_table.py) for one machine.

    ranker users load  --spec SPEC --redis URL
    ranker users build --spec SPEC --out FILE
    ranker users load  --data DIR [--split train|test] --redis URL
    ranker users build --data DIR [--split train|test] --out FILE

From a feature spec (features/spec.py): its users table, one record per row keyed by the user
key's raw id (features/values.py), holding the spec's user features by name (training/tables.py).

Reads `common_features_<split>.csv` (both splits, train first, when none is given) and writes
one record per user id (field 101) to Redis: the newest features seen, since a later row of a
user replaces an earlier one. Rows without a 101 id cannot be looked up and are skipped
(counted); malformed lines are skipped and counted as the trainer's reader does. Writes are
pipelined (one round trip per `--batch` users) and each record is one HSET, so a service reading
meanwhile sees a user's old record or its new one, never half of each. Records of users absent
from the files are left as they are: loading is an upsert, never a wipe.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from features import users
from features.contract import USER_FIELDS

log = logging.getLogger("ranker.users")


def read_users(data: Path, splits: list[str]) -> tuple[dict[int, dict], dict[str, int]]:
    """{user id: raw user features} (the newest row of each user wins) and line counts."""
    from training.aliccp import numbered_lines, parse_common_line
    from training.encoded import MalformedLine

    found: dict[int, dict] = {}
    counts = {"lines": 0, "malformed": 0, "without_101": 0}
    for split in splits:
        path = Path(data) / f"common_features_{split}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (expected the raw Ali-CCP layout)")
        for n, line in numbered_lines(path):
            counts["lines"] += 1
            try:
                _, feats = parse_common_line(line)
            except (MalformedLine, ValueError) as e:
                counts["malformed"] += 1
                if counts["malformed"] <= 5:
                    log.warning("%s line %d skipped: %s", path.name, n, e)
                continue
            feats = {k: v for k, v in feats.items() if k in USER_FIELDS}
            ids = feats.get("101", ((),))[0]
            if len(ids) != 1:
                counts["without_101"] += 1
                continue
            found[ids[0]] = feats
    return found, counts


def write_users(client, found: dict[int, dict], batch: int) -> int:
    """Pipelined HSETs of every record; the number written."""
    pipe = client.pipeline(transaction=False)
    for k, (user_id, feats) in enumerate(found.items(), 1):
        d, blob = users.encode(feats)
        pipe.hset(users.key(user_id), mapping={"d": d, "f": blob})
        if k % batch == 0:
            pipe.execute()
    pipe.execute()
    return len(found)


def _source(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", type=Path, help="a feature spec: its users table")
    src.add_argument("--data", type=Path, help="a folder in the raw Ali-CCP layout")
    parser.add_argument(
        "--split", choices=("train", "test"), help="with --data; default: train, then test"
    )


def _read(parser: argparse.ArgumentParser, args) -> tuple[dict[int, dict], str]:
    """{raw user key: features} and a line saying what was read."""
    if args.spec is not None:
        if args.split is not None:
            parser.error("--split goes with --data (a users table has no splits)")
        from features.spec import SpecError
        from training.tables import user_records

        try:
            spec, records = user_records(args.spec)
        except SpecError as e:
            parser.error(str(e))
        return dict(records), f"{spec.table_path('users')} ({len(records)} rows)"
    splits = [args.split] if args.split else ["train", "test"]
    try:
        found, counts = read_users(args.data, splits)
    except FileNotFoundError as e:
        parser.error(str(e))
    return found, (
        f"{args.data} ({', '.join(splits)}: {counts['lines']} lines, {counts['malformed']} "
        f"malformed, {counts['without_101']} without a 101 id)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranker users", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    ld = sub.add_parser("load", help="write the users of a spec or Ali-CCP folder to Redis")
    _source(ld)
    ld.add_argument(
        "--redis",
        required=True,
        help="the store: redis://127.0.0.1:6379/0, or a Redis Cluster as redis+cluster://host:port",
    )
    ld.add_argument("--batch", type=int, default=1000, help="users per pipelined round trip")
    bd = sub.add_parser("build", help="write the embedded store's file (RANKER_USER_STORE=FILE)")
    _source(bd)
    bd.add_argument("--out", type=Path, required=True, help="the user table file (.npz)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    found, what = _read(ld if args.action == "load" else bd, args)
    if args.action == "build":
        from features.user_table import UserTable

        table = UserTable.from_records(found.items(), source=what)
        table.save(args.out)
        log.info(
            "%d users from %s into %s (%.1f MB, %.1f s)",
            len(table),
            what,
            args.out,
            args.out.stat().st_size / 1e6,
            time.perf_counter() - t0,
        )
        return 0
    import redis

    from service.redis_guard import redacted, redis_client

    client = None
    try:  # a cluster client asks for the slot map as it is made: that can fail too
        client = redis_client(args.redis, sync=True, socket_timeout=10)
        written = write_users(client, found, max(1, args.batch))
    except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
        log.error("the store at %s failed: %s", redacted(args.redis), e)
        return 1
    finally:
        if client is not None:
            client.close()
    log.info(
        "%d users from %s into %s in %.1f s",
        written,
        what,
        redacted(args.redis),
        time.perf_counter() - t0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
