"""The model registry: immutable, checksummed model versions and an active pointer.

Layout (docs/contracts.md), under `$MEKB_DATA_DIR/registry/` by default:

    versions/<version>/          one bundle per version, immutable once published
        manifest.json            version, parent, kind, created_at, files {name: sha256}, ...
        user_tower.onnx, tokenizer/, items.npy, items.json
    versions/.staging-<pid>-<id>/  a publication in progress (never read)
    ACTIVE                       the active version id (text), replaced atomically
    PINNED                       the pin, if any (JSON: version, at, reason)
    history.jsonl                one line per activation/rollback/pin/unpin/held
                                 publication (the rollback stack)
    .pointer.lock                flock serialising every change of ACTIVE/PINNED

Publication order, written down where it happens (`Registry.publish`): copy the
bundle into a staging directory → verify/complete the sha256 of every file →
write the manifest → fsync every file and directory → rename to its final name
→ fsync `versions/`. A reader lists only directories without a leading dot, so it
never sees a half-written version; a crashed publication leaves only a
`.staging-*` directory, removed by `cleanup()` once its process is gone.

Version ids are `YYYYMMDDTHHMMSSZ-<6 hex>` (UTC), sortable by time to the second;
`list()` orders by the manifest's `created_at`, then id.

A pin holds the active version against automatic publication: `promote()` (the
trainer's activation of a new version) then publishes it inactive ("held") instead.
Operators still move the pointer: `activate`, `rollback` and `pin` move the pin with
it, and a rollback pins (a rolled-back version must not be replaced by the next
candidate of the lineage it was rolled back from). Only `unpin` releases it. The pin
is a file beside ACTIVE, so it survives restarts of every process.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mekb.durable import fsync_path, fsync_tree, write_text_atomic

if TYPE_CHECKING:
    from mekb.settings import Settings

logger = logging.getLogger(__name__)

Kind = Literal["full", "items"]
# The model family of a version's user tower (manifest `model_kind`; `kind` above is the
# publication kind). Serving and the trainer register one implementation per name
# (serving/encoder.py, trainer/kinds); a manifest written before kinds existed has no
# `model_kind` and is EmbedMe.
MODEL_KINDS = ("embedme", "entitygraph")
DEFAULT_MODEL_KIND = "embedme"
MANIFEST = "manifest.json"
PIN_FILE = "PINNED"
LOCK_FILE = ".pointer.lock"
# History ops that move ACTIVE (and so build the rollback stack); `unpin` and `held`
# (a version published inactive under a pin) do not.
POINTER_OPS = ("activate", "rollback", "pin")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
# A staging directory of a live process is left alone unless it is this old.
STALE_STAGING_S = 24 * 3600.0


class RegistryError(Exception):
    """A registry operation failed in a way the user can act on."""


class VersionNotFound(RegistryError):
    """No published version with this id."""


class IntegrityError(RegistryError):
    """A version's files do not match its manifest checksums."""


class UnknownModelKind(RegistryError, ValueError):
    """A manifest names a model kind this installation does not know (a ValueError too,
    so `list()` skips such a version with a warning instead of failing)."""


def check_model_kind(manifest: dict[str, Any], where: str) -> str:
    """The manifest's model kind (absent: EmbedMe); UnknownModelKind when unknown."""
    kind = manifest.get("model_kind", DEFAULT_MODEL_KIND)
    if kind not in MODEL_KINDS:
        raise UnknownModelKind(f"{where}: unknown model kind {kind!r} (known: "
                               f"{', '.join(MODEL_KINDS)}); upgrade mekb to load it")
    return str(kind)


@dataclass(frozen=True)
class Pin:
    """The version the registry is pinned to, since when and why (pin, rollback, activate)."""

    version: str
    at: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def new_version_id(now: float | None = None) -> str:
    """`20261124T120000Z-3f2a1c`: UTC time to the second, then 6 random hex digits."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def check_version_id(version: str) -> str:
    """Reject ids that could escape `versions/` or name a staging directory."""
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise RegistryError(
            f"invalid version id {version!r}: 1-128 characters of A-Z a-z 0-9 . _ -, "
            "not starting with a dot"
        )
    return version


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(root: Path) -> list[str]:
    """Relative POSIX paths of every file of a bundle except the manifest, sorted."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ModelVersion:
    """One published version: its directory and manifest."""

    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "full"))

    @property
    def model_kind(self) -> str:
        """embedme | entitygraph (checked when the version was loaded)."""
        return str(self.manifest.get("model_kind", DEFAULT_MODEL_KIND))

    @property
    def parent(self) -> str | None:
        parent = self.manifest.get("parent")
        return str(parent) if parent else None

    @property
    def created_at(self) -> float:
        return float(self.manifest.get("created_at", 0.0))

    @property
    def files(self) -> dict[str, str]:
        return dict(self.manifest.get("files", {}))

    def file(self, name: str) -> Path:
        return self.path / name


class Registry:
    """A registry directory. Safe for concurrent readers; publishers use unique staging dirs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.active_file = self.root / "ACTIVE"
        self.pin_file = self.root / PIN_FILE
        self.history_file = self.root / "history.jsonl"

    # --- reading ---------------------------------------------------------------
    def list(self) -> list[ModelVersion]:
        """Every published version, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        found = []
        for child in self.versions_dir.iterdir():
            if child.name.startswith(".") or not (child / MANIFEST).is_file():
                continue
            try:
                found.append(self._load(child))
            except (OSError, ValueError) as exc:
                logger.warning("registry: skipping unreadable version %s: %s", child.name, exc)
        return sorted(found, key=lambda v: (v.created_at, v.version))

    def get(self, version: str) -> ModelVersion:
        path = self.versions_dir / check_version_id(version)
        if not (path / MANIFEST).is_file():
            raise VersionNotFound(f"no model version {version!r} in {self.versions_dir}")
        return self._load(path)

    def _load(self, path: Path) -> ModelVersion:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("manifest is not a JSON object")
        check_model_kind(manifest, f"version {path.name}")
        return ModelVersion(path.name, path, manifest)

    def verify(self, version: str) -> ModelVersion:
        """Recompute the sha256 of every file; raise IntegrityError on any difference."""
        mv = self.get(version)
        expected = mv.files
        if not expected:
            raise IntegrityError(f"version {version}: manifest lists no files")
        problems = []
        present = set(bundle_files(mv.path))
        for name, digest in sorted(expected.items()):
            if name not in present:
                problems.append(f"{name} missing")
            elif sha256_file(mv.path / name) != digest:
                problems.append(f"{name} checksum mismatch")
        problems.extend(f"{name} not in manifest" for name in sorted(present - set(expected)))
        if problems:
            raise IntegrityError(f"version {version}: " + "; ".join(problems))
        return mv

    def active(self) -> ModelVersion | None:
        """The active version, or None when nothing was activated yet."""
        name = self.active_version()
        return self.get(name) if name else None

    def active_version(self) -> str | None:
        try:
            name = self.active_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    # --- publishing -------------------------------------------------------------
    def publish(
        self,
        bundle_dir: Path,
        *,
        parent: str | None = None,
        kind: Kind = "full",
        version: str | None = None,
        move: bool = False,
        activate: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Publish a bundle directory as a new immutable version.

        The version id is `version`, else the bundle manifest's `version`, else a new
        one. Checksums already in the bundle manifest must match the files; missing
        ones are computed. `extra` is merged into the manifest (metrics, gate, ...).
        """
        bundle_dir = Path(bundle_dir)
        # Every version is self-contained: an `items` refit carries its (unchanged) user
        # tower too, so serving loads any version from its own directory.
        if not (bundle_dir / "user_tower.onnx").is_file():
            raise RegistryError(f"{bundle_dir} is not a model bundle (no user_tower.onnx)")
        if kind not in ("full", "items"):
            raise RegistryError(f"kind must be 'full' or 'items', not {kind!r}")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.versions_dir / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            # 1. copy (or move) into a directory readers ignore
            if move and _same_fs(bundle_dir, self.versions_dir):
                os.replace(bundle_dir, staging)
            elif move:
                shutil.move(str(bundle_dir), str(staging))
            else:
                shutil.copytree(bundle_dir, staging)
            manifest_path = staging / MANIFEST
            manifest: dict[str, Any] = (
                json.loads(manifest_path.read_text(encoding="utf-8"))
                if manifest_path.is_file() else {}
            )
            # 2. checksums: verify what the writer recorded, complete what it did not
            actual = {name: sha256_file(staging / name) for name in bundle_files(staging)}
            recorded = manifest.get("files") or {}
            wrong = sorted(n for n, d in recorded.items() if actual.get(n) != d)
            if wrong:
                raise IntegrityError(f"bundle {bundle_dir}: checksum mismatch or missing: {wrong}")
            # 3. identity
            name = check_version_id(version or manifest.get("version") or new_version_id())
            if (self.versions_dir / name).exists():
                raise RegistryError(f"version {name} already exists (versions are immutable)")
            if parent is not None:
                check_version_id(parent)
            manifest.update(extra or {})
            manifest.update(
                model_kind=check_model_kind(manifest, f"bundle {bundle_dir}"),
                version=name,
                parent=parent if parent is not None else manifest.get("parent"),
                kind=kind,
                created_at=float(manifest.get("created_at") or time.time()),
                files=actual,
            )
            manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            # 4. durable, then 5. visible in one rename
            fsync_tree(staging)
            final = self.versions_dir / name
            os.rename(staging, final)
            fsync_path(self.versions_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("registry: published %s (kind %s, parent %s)", name, kind, manifest["parent"])
        mv = self._load(final)
        if activate:
            self.activate(name)
        return mv

    # --- the active pointer and the pin --------------------------------------------
    @contextlib.contextmanager
    def _pointer_lock(self) -> Iterator[None]:
        """Serialise changes of ACTIVE/PINNED across processes (trainer, CLI, serving
        admin), so a pin set while the trainer publishes cannot be overtaken by it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def pinned(self) -> Pin | None:
        """The pin, or None when the trainer may activate what it publishes."""
        try:
            data = json.loads(self.pin_file.read_text(encoding="utf-8"))
            return Pin(str(data["version"]), float(data["at"]), str(data["reason"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Written atomically, so this is damage, not a torn write: hold what is active
            # rather than let the trainer replace it.
            logger.warning("registry: unreadable %s (%s): treating the registry as pinned",
                           self.pin_file, exc)
            return Pin(self.active_version() or "?", 0.0, "unreadable PINNED file")

    def _write_pin(self, version: str, reason: str) -> None:
        pin = Pin(version, time.time(), reason)
        write_text_atomic(self.pin_file, json.dumps(pin.to_json()) + "\n")

    def _point(self, version: str, op: str, **extra: Any) -> str | None:
        """Move ACTIVE (caller holds the lock) and record it; returns the previous one.
        A pin moves along (written first: a crash in between still holds the registry)."""
        previous = self.active_version()
        pin = self.pinned()
        if op == "pin" or (pin is not None and pin.version != version):
            self._write_pin(version, extra.get("reason") or op)
        write_text_atomic(self.active_file, version + "\n")
        self._append_history({"op": op, "version": version, "previous": previous,
                              **({"pinned": True} if pin is not None or op == "pin" else {}),
                              **extra})
        return previous

    def activate(self, version: str, *, verify: bool = True) -> ModelVersion:
        """Point ACTIVE at `version` (verified first) and record it for rollback. An
        operator's choice: a pin, if any, moves to `version` (see `promote`)."""
        mv = self.verify(version) if verify else self.get(version)
        with self._pointer_lock():
            previous = self._point(version, "activate")
        logger.info("registry: active version %s (was %s)", version, previous)
        return mv

    def promote(self, version: str) -> bool:
        """Activate a version the trainer just published, unless the registry is pinned:
        then it stays inactive, recorded as `held` in the history. True = activated."""
        self.verify(version)
        with self._pointer_lock():
            pin = self.pinned()
            if pin is not None:
                self._append_history({"op": "held", "version": version,
                                      "pinned_version": pin.version})
                logger.info("registry: %s published inactive (pinned to %s)", version,
                            pin.version)
                return False
            previous = self._point(version, "activate")
        logger.info("registry: active version %s (was %s)", version, previous)
        return True

    def pin(self, version: str, *, reason: str = "pin", verify: bool = True) -> ModelVersion:
        """Pin `version`: make it active if it is not, and keep it active until `unpin`."""
        mv = self.verify(version) if verify else self.get(version)
        with self._pointer_lock():
            previous = self._point(version, "pin", reason=reason)
        logger.info("registry: pinned %s (active was %s)", version, previous)
        return mv

    def unpin(self) -> Pin | None:
        """Release the pin (None if there was none): the trainer's next version that
        passes the gate becomes active again."""
        with self._pointer_lock():
            pin = self.pinned()
            if pin is None:
                return None
            self.pin_file.unlink(missing_ok=True)
            fsync_path(self.root)
            self._append_history({"op": "unpin", "version": pin.version})
        logger.info("registry: unpinned %s", pin.version)
        return pin

    def held_versions(self) -> set[str]:
        """Versions published inactive under a pin and not activated since."""
        held: set[str] = set()
        for entry in self.history():
            version = entry.get("version")
            if entry.get("op") == "held":
                held.add(str(version))
            elif entry.get("op") in POINTER_OPS:
                held.discard(str(version))
        return held

    def rollback_target(self) -> str:
        """The version `rollback()` would re-activate: the one active before the current
        one that still exists (so a server can load and warm it before the switch)."""
        stack = self._activation_stack()
        current = self.active_version()
        if current is None:
            raise RegistryError("nothing is active, nothing to roll back")
        while stack and stack[-1] == current:
            stack.pop()
        while stack and not (self.versions_dir / stack[-1] / MANIFEST).is_file():
            stack.pop()  # pruned since
        if not stack:
            raise RegistryError(f"no earlier active version to roll back to from {current}")
        return stack[-1]

    def rollback(self) -> ModelVersion:
        """Re-activate the version that was active before the current one, and pin it:
        the trainer's next candidate (of the lineage rolled back from) stays inactive."""
        with self._pointer_lock():
            target = self.rollback_target()
            mv = self.verify(target)
            self._write_pin(target, "rollback")
            current = self._point(target, "rollback")
        logger.info("registry: rolled back %s -> %s (pinned)", current, target)
        return mv

    def _append_history(self, entry: dict[str, Any]) -> None:
        entry = {"at": time.time(), **entry}
        with open(self.history_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def history(self) -> builtins.list[dict[str, Any]]:
        try:
            lines = self.history_file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line after a crash
        return out

    def _activation_stack(self) -> builtins.list[str]:
        """Replay the history: activate pushes, rollback pops back to its target."""
        stack: builtins.list[str] = []
        for entry in self.history():
            version = entry.get("version")
            if not version or entry.get("op", "activate") not in POINTER_OPS:
                continue
            if entry.get("op") == "rollback":
                while stack and stack[-1] != version:
                    stack.pop()
                if not stack:
                    stack.append(version)
            elif not stack or stack[-1] != version:
                stack.append(version)
        # ACTIVE is the truth if a crash came between the pointer and the history line.
        active = self.active_version()
        if active and (not stack or stack[-1] != active):
            stack.append(active)
        return stack

    # --- retention ------------------------------------------------------------------
    def prune(self, keep_last: int) -> builtins.list[str]:
        """Delete all but the newest `keep_last` versions.

        Never deletes the active version, its parent (an items version needs its user
        tower's lineage) or the rollback target. Returns the deleted ids.
        """
        if keep_last < 1:
            raise RegistryError("keep_last must be at least 1")
        versions = self.list()
        keep = {v.version for v in versions[-keep_last:]}
        active = self.active()
        if active is not None:
            keep.add(active.version)
            if active.parent:
                keep.add(active.parent)
            stack = [v for v in self._activation_stack() if v != active.version]
            if stack:
                keep.add(stack[-1])
        deleted = []
        for mv in versions:
            if mv.version in keep:
                continue
            trash = self.versions_dir / f"{TRASH_PREFIX}{mv.version}-{uuid.uuid4().hex[:6]}"
            os.rename(mv.path, trash)  # disappears atomically for readers, then is deleted
            shutil.rmtree(trash, ignore_errors=True)
            deleted.append(mv.version)
        if deleted:
            logger.info("registry: pruned %d versions: %s", len(deleted), ", ".join(deleted))
        return deleted

    def cleanup(self, *, stale_after_s: float = STALE_STAGING_S) -> builtins.list[str]:
        """Remove staging/trash directories left by crashed processes."""
        if not self.versions_dir.is_dir():
            return []
        removed = []
        now = time.time()
        for child in self.versions_dir.iterdir():
            if child.name.startswith(TRASH_PREFIX):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
            elif child.name.startswith(STAGING_PREFIX):
                pid_text = child.name[len(STAGING_PREFIX):].split("-", 1)[0]
                alive = pid_text.isdigit() and _pid_alive(int(pid_text))
                old = now - child.stat().st_mtime > stale_after_s
                if not alive or old:
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(child.name)
        return removed


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def registry_root(settings: Settings) -> Path:
    """`MEKB_REGISTRY_DIR`, else `$MEKB_DATA_DIR/registry`."""
    return settings.registry_dir or settings.data_dir / "registry"


def model_update_event(mv: ModelVersion) -> dict[str, Any]:
    """The `model-updates` record of a version (docs/contracts.md)."""
    return {
        "v": 1,
        "version": mv.version,
        "kind": mv.kind,
        "model_kind": mv.model_kind,
        "created_at": mv.created_at,
        "parent": mv.parent,
    }


def announce(settings: Any, version: ModelVersion | str, *, timeout_s: float = 10.0) -> None:
    """Produce the `model-updates` event of a version (key = version), once (the CLI's
    `mekb models activate/rollback`). A process that announces again and again keeps an
    `Announcer`.

    Serving replicas follow the ACTIVE pointer when they receive it.
    """
    announcer = Announcer(settings, timeout_s=timeout_s)
    try:
        announcer(version)
    finally:
        announcer.close()


class Announcer:
    """`announce` with one producer kept between calls: the trainer announces every
    publication (EntityGraph: every few seconds) and serving every admin activation,
    and each new KafkaProducer bootstraps (metadata, API versions, a network thread):
    tens of milliseconds of Python holding the GIL against the process's event loop.
    A failed send drops the producer; the next call connects again. Thread-safe."""

    def __init__(self, settings: Any, *, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._producer: Any = None
        self._lock = threading.Lock()

    def __call__(self, version: ModelVersion | str) -> None:
        settings = self.settings
        mv = version if isinstance(version, ModelVersion) else Registry(
            registry_root(settings)).get(version)
        with self._lock:
            if self._producer is None:
                from kafka import KafkaProducer

                from mekb.kafka_config import kafka_python_config

                self._producer = KafkaProducer(**kafka_python_config(settings), acks="all",
                                               linger_ms=0)
            try:
                self._producer.send(
                    settings.topic("model-updates"), key=mv.version.encode(),
                    value=json.dumps(model_update_event(mv)).encode(),
                ).get(timeout=self.timeout_s)
            except Exception:
                self._close()
                raise
        logger.info("announced model version %s on %s", mv.version, settings.topic("model-updates"))

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=self.timeout_s)
