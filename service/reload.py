"""Loading model versions off the serving path, and swapping them in.

`ModelLoader.build` is the one way a version becomes servable, at start and on every reload: the
engine checks the manifest against the graphs, warm-up re-scores the sample rows stored with the
model (a parity smoke test) and then runs the scorer at the batch sizes traffic has been using.
It is synchronous and runs in a worker thread, never on the event loop or the ONNX thread, so
serving goes on meanwhile.

`Reloader` swaps a built version into the slot (served.py), one reload at a time. A version that
cannot be loaded or does not pass its checks is refused with a log line that says why, and the
old one keeps serving. Triggers: `POST /admin/reload` and, when `RANKER_RELOAD_POLL_S` > 0, a
watcher that notices a newer version folder under `RANKER_MODEL_DIR`, unless a version is pinned
(a reload that names its folder pins it; one that names none unpins: see admin.py). The item
table (RANKER_ITEM_TABLE) belongs to a served version: replacing its file and reloading (or
letting the watcher notice) builds a new version with the new table, with the same guarantees:
nothing dropped, a broken table refused with its reason while the old one keeps serving.

Messages name folders relative to RANKER_MODEL_DIR: a refusal tells a client what was wrong
with the model, not where the server keeps its files.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from features import manifest
from features.items import ItemTable, ItemTableError
from service.arms import ArmsError
from service.config import Settings
from service.encoding import StoredItems, payload_size
from service.engine import Engine
from service.errors import ClientError, ModelRefused
from service.metrics import Metrics
from service.model_folder import ModelError, newest_version
from service.served import ModelSlot, ServedModel
from service.user_cache import LocalLRU, RedisTier, UserCache

log = logging.getLogger("service.reload")
DEFAULT_WARM_ROWS = (1, 64, 512)


class ModelLoader:
    def __init__(
        self, settings: Settings, executor: Executor, redis: RedisTier | None, metrics: Metrics
    ):
        self.settings, self.executor, self.redis, self.metrics = settings, executor, redis, metrics

    def build(self, folder: Path, warm_rows: tuple[int, ...] = DEFAULT_WARM_ROWS) -> ServedModel:
        """Load, check and warm one version folder; raises ModelError saying what is wrong."""
        s = self.settings
        engine = Engine.from_settings(folder, s)
        try:
            engine.warm(warm_rows)
        except ModelError:
            raise
        except Exception as e:  # a missing or damaged samples.npz, a graph that fails to run
            raise ModelError(f"{engine.version}: warm-up failed ({type(e).__name__})") from e
        cache = UserCache(
            engine.digest,
            engine.repr_dim + payload_size(engine.contract),  # the user part (encoding.py)
            LocalLRU(s.cache_size, s.cache_ttl_s, s.cache_bytes),  # each version has its own
            self.redis,  # shared: keys and values carry the model's content digest
            self.metrics.on_cache,
        )
        items, stamp = None, self.table_stamp()
        if s.item_table is not None:
            try:
                items = StoredItems(  # the log needs the raw rows of the items it logs
                    ItemTable.load(s.item_table), engine.contract, keep_raw=s.log_dir is not None
                )
            except ItemTableError as e:
                raise ModelError(f"item table {Path(s.item_table).name}: {e}") from None
        return ServedModel(
            engine, cache, s.max_batch_rows, self.executor, self.metrics.on_run, items, stamp
        )

    def table_stamp(self) -> tuple | None:
        """The item table file's identity (inode, size, mtime): replacing the file (written
        beside it and renamed into place, as `ranker items build` does) changes it."""
        if self.settings.item_table is None:
            return None
        try:
            st = Path(self.settings.item_table).stat()
        except OSError:
            return ("missing",)
        return (st.st_ino, st.st_size, st.st_mtime_ns)


def warm_rows_for(recent: list[int], max_batch_rows: int) -> tuple[int, ...]:
    """The batch sizes to warm a new version on: those traffic has been running (quartiles and
    max of recent runs), plus the extremes it can reach."""
    sizes = {1, max_batch_rows}
    if recent:
        sizes.update(int(q) for q in np.quantile(recent, [0.25, 0.5, 0.75, 1.0]))
    else:
        sizes.update(DEFAULT_WARM_ROWS)
    return tuple(sorted(n for n in sizes if n >= 1))


class Reloader:
    def __init__(
        self,
        settings: Settings,
        loader: ModelLoader,
        slot: ModelSlot,
        metrics: Metrics,
        warm_up=lambda model: None,  # recent requests replayed into a built version
    ):
        self.settings, self.loader, self.slot, self.metrics = settings, loader, slot, metrics
        self.warm_up = warm_up
        self.root = Path(settings.model_dir).resolve()
        # (folder, table stamp) -> why: the watcher does not retry these
        self.refused: dict[tuple[Path, tuple | None], str] = {}
        self.pinned: str | None = None  # a version folder (relative): the watcher leaves it be
        self._lock = asyncio.Lock()

    def version_folder(self, path: str) -> Path:
        """A client's relative path -> a folder inside the model folder, or a ClientError."""
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in path) or path.startswith(("/", "\\")):
            raise ClientError(
                "path must be a relative path without control characters", field="path"
            )
        folder = (self.root / path).resolve()
        if not folder.is_relative_to(self.root) or folder == self.root:
            raise ClientError(
                "path must name a version folder inside RANKER_MODEL_DIR", field="path"
            )
        if not folder.is_dir():  # the client's error; a folder that is no model is a 409
            raise ClientError(
                f"path {path!r} names no folder inside RANKER_MODEL_DIR", field="path"
            )
        return folder

    def _shown(self, folder: Path) -> str:
        folder = Path(folder).resolve()
        return str(folder.relative_to(self.root)) if folder.is_relative_to(self.root) else "."

    async def reload(self, folder: Path | None = None, pin: bool = False) -> dict:
        """Load `folder` (default: the newest version under the model folder) and swap it in;
        `pin` keeps the watcher off it (False: the watcher follows the newest again). Raises
        ModelRefused, and keeps the current version, when it cannot be served."""
        async with self._lock:
            current = self.slot.current
            try:
                target = newest_version(self.settings.model_dir) if folder is None else folder
            except ModelError:
                raise self._refuse(self.root, "no model version found", current.version) from None
            target = Path(target).resolve()
            if not (target / manifest.FILE).is_file():
                raise self._refuse(target, "not a model version folder", current.version)
            same_table = current.table_stamp == self.loader.table_stamp()
            if target == current.engine.folder.resolve() and same_table:
                self.pinned = self._shown(target) if pin else None
                return self._answer("unchanged", current.version)
            warm = warm_rows_for(list(current.batcher.recent_rows), self.settings.max_batch_rows)
            try:
                new = await asyncio.to_thread(self.loader.build, target, warm)
            except ModelError as e:
                raise self._refuse(target, str(e), current.version) from None
            await asyncio.to_thread(self.warm_up, new)
            old = self.slot.swap(new)
            self.pinned = self._shown(target) if pin else None
            self.refused.pop((target, new.table_stamp), None)
            self.metrics.reloads.labels("ok").inc()
            self.metrics.on_model(new.version, old.version)
            log.info(
                "now serving %s (%s) from %s (was %s)%s",
                new.version,
                new.digest[:12],
                self._shown(target),
                old.version,
                "; pinned" if pin else "",
            )
            return self._answer("reloaded", new.version, previous=old.version)

    def _answer(self, status: str, version: str, **extra) -> dict:
        return {"status": status, "model_version": version, "pinned": self.pinned, **extra}

    def _refuse(self, folder: Path, why: str, serving: str) -> ModelRefused:
        self.refused[(Path(folder).resolve(), self.loader.table_stamp())] = why
        self.metrics.reloads.labels("refused").inc()
        shown = self._shown(folder)
        log.error("refused model %s: %s; still serving %s", shown, why, serving)
        return ModelRefused(f"refused {shown}: {why}; still serving {serving}")

    async def attach_models(self, arms, previous=None) -> None:
        """Load each version folder an arms config names into `arms.slots` (a slot `previous`
        holds for the same folder is taken over, not loaded again), as a reload loads a version;
        ArmsError naming the folder and why when one cannot be served (what this call loaded is
        closed again)."""
        loaded = []
        try:
            for name in arms.models():
                if previous is not None and name in previous.slots:
                    arms.slots[name] = previous.slots[name]
                    continue
                try:
                    folder = self.version_folder(name)
                except ClientError as e:
                    raise ArmsError(f"{arms.source}: model {name}: {e.message}") from None
                if not (folder / manifest.FILE).is_file():
                    raise ArmsError(f"{arms.source}: model {name}: not a model version folder")
                try:
                    built = await asyncio.to_thread(self.loader.build, folder)
                except ModelError as e:
                    raise ArmsError(f"{arms.source}: model {name}: {e}") from None
                await asyncio.to_thread(self.warm_up, built)
                arms.slots[name] = slot = ModelSlot(built)
                loaded.append(slot)
                log.info("arms: %s loaded as %s (%s)", name, built.version, built.digest[:12])
        except BaseException:
            for slot in loaded:
                await slot.close()
            raise

    @staticmethod
    def detach_models(old, new) -> None:
        """The versions `old` named that `new` does not: retired (closed after their last
        request)."""
        if old is None:
            return
        for name, slot in old.slots.items():
            if new is None or new.slots.get(name) is not slot:
                slot.retire()

    async def watch(self, interval_s: float) -> None:
        """Reload when a newer version folder appears or the item table file changes, unless a
        version is pinned; a refused folder (with that table) is not tried again."""
        while True:
            await asyncio.sleep(interval_s)
            if self.pinned is not None:
                continue
            try:
                target = newest_version(self.settings.model_dir).resolve()
            except ModelError:
                continue
            current, stamp = self.slot.current, self.loader.table_stamp()
            if target == current.engine.folder.resolve() and current.table_stamp == stamp:
                continue
            if (target, stamp) in self.refused:
                continue
            try:
                await self.reload(target)
            except ModelRefused:
                pass
            except Exception:  # the watcher must outlive anything a folder can do to it
                log.exception("reload of %s failed", self._shown(target))
