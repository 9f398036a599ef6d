"""mekb.registry: atomic publication, checksums, active pointer, rollback, retention."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from mekb.registry import (
    IntegrityError,
    Registry,
    RegistryError,
    VersionNotFound,
    model_update_event,
    new_version_id,
)


def make_bundle(root: Path, payload: bytes = b"onnx-bytes", *, with_sums: bool = True) -> Path:
    root.mkdir(parents=True)
    (root / "user_tower.onnx").write_bytes(payload)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (root / "items.npy").write_bytes(b"\x93NUMPY-fake")
    (root / "items.json").write_text(json.dumps({"item_ids": ["i1"], "domains": ["a"]}))
    manifest: dict = {"encoder": "minilm", "max_tokens": 32, "dim": 8}
    if with_sums:
        manifest["files"] = {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()
        }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_version_ids_sort_by_time() -> None:
    a, b = new_version_id(1_700_000_000), new_version_id(1_700_000_001)
    assert a.startswith("20231114T221320Z-") and len(a) == 23
    assert a < b


def test_publish_makes_an_immutable_checksummed_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    mv = reg.publish(make_bundle(tmp_path / "b1"), parent=None, kind="full")
    assert mv.path.parent == reg.versions_dir and mv.path.name == mv.version
    assert set(mv.files) == {"user_tower.onnx", "tokenizer/vocab.txt", "items.npy", "items.json"}
    assert mv.manifest["encoder"] == "minilm" and mv.kind == "full" and mv.created_at > 0
    assert reg.verify(mv.version).version == mv.version
    assert [v.version for v in reg.list()] == [mv.version]
    # nothing left in staging, the source bundle untouched (copy mode)
    assert [p.name for p in reg.versions_dir.iterdir()] == [mv.version]
    assert (tmp_path / "b1" / "user_tower.onnx").exists()
    with pytest.raises(RegistryError, match="already exists"):
        reg.publish(make_bundle(tmp_path / "b2"), version=mv.version)


def test_publish_computes_missing_checksums_and_rejects_wrong_ones(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    mv = reg.publish(make_bundle(tmp_path / "b1", with_sums=False), move=True)
    assert len(mv.files) == 4 and not (tmp_path / "b1").exists()
    bad = make_bundle(tmp_path / "b2")
    (bad / "items.npy").write_bytes(b"changed after the manifest was written")
    with pytest.raises(IntegrityError, match="items.npy"):
        reg.publish(bad)
    assert [v.version for v in reg.list()] == [mv.version]
    assert not any(p.name.startswith(".staging-") for p in reg.versions_dir.iterdir())


def test_publish_refuses_non_bundles_and_bad_ids(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="not a model bundle"):
        reg.publish(tmp_path / "empty")
    with pytest.raises(RegistryError, match="invalid version id"):
        reg.publish(make_bundle(tmp_path / "b"), version="../escape")
    with pytest.raises(RegistryError, match="invalid version id"):
        reg.get("../../etc")
    with pytest.raises(VersionNotFound):
        reg.get("nope")


def test_verify_detects_tampering(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    mv = reg.publish(make_bundle(tmp_path / "b"))
    (mv.path / "user_tower.onnx").write_bytes(b"tampered")
    (mv.path / "extra.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="user_tower.onnx checksum mismatch.*extra.bin"):
        reg.verify(mv.version)
    with pytest.raises(IntegrityError):
        reg.activate(mv.version)
    assert reg.active() is None


def test_activate_and_rollback_walk_the_history(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    a = reg.publish(make_bundle(tmp_path / "a", b"a"), version="v1")
    b = reg.publish(make_bundle(tmp_path / "b", b"b"), version="v2", parent=a.version)
    c = reg.publish(make_bundle(tmp_path / "c", b"c"), version="v3", parent=b.version,
                    activate=True)
    assert reg.active() is not None and reg.active().version == c.version  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="no earlier"):
        reg.rollback()
    reg.activate(a.version)
    reg.activate(b.version)
    assert reg.rollback().version == "v1"
    assert reg.rollback().version == "v3"
    assert reg.active_version() == "v3"
    assert [h["op"] for h in reg.history()] == ["activate"] * 3 + ["rollback"] * 2
    assert b.parent == "v1"


def test_history_survives_a_torn_line_and_a_missing_entry(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    reg.publish(make_bundle(tmp_path / "a", b"a"), version="v1", activate=True)
    reg.publish(make_bundle(tmp_path / "b", b"b"), version="v2")
    # crash between the pointer replace and the history append, then a torn line
    (reg.root / "ACTIVE").write_text("v2\n")
    with open(reg.history_file, "a") as fh:
        fh.write('{"op": "activ')
    assert reg.rollback().version == "v1"


def test_prune_keeps_newest_active_parent_and_rollback_target(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    ids = []
    for n in range(6):
        mv = reg.publish(make_bundle(tmp_path / f"b{n}", bytes([n])), version=f"v{n}",
                         parent=ids[-1] if ids else None, extra={"created_at": 1000.0 + n})
        ids.append(mv.version)
    reg.activate("v0")
    reg.activate("v2")  # parent v1, rollback target v0
    deleted = reg.prune(keep_last=2)
    assert sorted(deleted) == ["v3"]
    assert [v.version for v in reg.list()] == ["v0", "v1", "v2", "v4", "v5"]
    with pytest.raises(RegistryError):
        reg.prune(0)


def test_cleanup_removes_staging_of_dead_processes_only(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    reg.versions_dir.mkdir(parents=True)
    dead = reg.versions_dir / ".staging-999999999-abcd"
    live = reg.versions_dir / f".staging-{os.getpid()}-abcd"
    dead.mkdir()
    live.mkdir()
    (dead / "manifest.json").write_text("{}")
    assert reg.list() == []  # staging dirs are invisible
    assert reg.cleanup() == [dead.name]
    assert live.exists()


def test_model_update_event_matches_the_contract(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    mv = reg.publish(make_bundle(tmp_path / "b"), version="20261124T120000Z-3f2a1c",
                     parent="20261124T110000Z-9a8b7c", kind="items")
    event = model_update_event(mv)
    assert set(event) == {"v", "version", "kind", "model_kind", "created_at", "parent"}
    assert event["v"] == 1 and event["kind"] == "items" and event["model_kind"] == "embedme"
    assert event["parent"] == "20261124T110000Z-9a8b7c"


def _three_versions(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "reg")
    for n, parent in ((1, None), (2, "v1"), (3, "v2")):
        reg.publish(make_bundle(tmp_path / f"b{n}", bytes([n])), version=f"v{n}", parent=parent)
    return reg


def test_a_pin_holds_promotion_until_unpinned_and_survives_a_new_registry_object(
    tmp_path: Path,
) -> None:
    reg = _three_versions(tmp_path)
    assert reg.promote("v1") is True and reg.pinned() is None
    pin = reg.pin("v1")
    assert pin.version == "v1"
    assert reg.promote("v2") is False  # the trainer's new version stays inactive
    assert reg.active_version() == "v1"
    # stored in the registry: another process (a restarted trainer) sees the same pin
    again = Registry(reg.root)
    assert again.pinned() is not None and again.pinned().version == "v1"  # type: ignore[union-attr]
    assert again.promote("v3") is False and again.active_version() == "v1"
    assert again.held_versions() == {"v2", "v3"}
    released = again.unpin()
    assert released is not None and released.version == "v1" and again.pinned() is None
    assert again.unpin() is None
    assert again.promote("v3") is True and again.active_version() == "v3"
    assert again.held_versions() == {"v2"}
    ops = [(h["op"], h["version"]) for h in again.history()]
    assert ops == [("activate", "v1"), ("pin", "v1"), ("held", "v2"), ("held", "v3"),
                   ("unpin", "v1"), ("activate", "v3")]
    # held versions never entered the rollback stack: back to v1, not to v2
    assert again.rollback_target() == "v1"


def test_rollback_pins_its_target(tmp_path: Path) -> None:
    reg = _three_versions(tmp_path)
    reg.activate("v1")
    reg.activate("v2")
    assert reg.rollback().version == "v1"
    pin = reg.pinned()
    assert pin is not None and (pin.version, pin.reason) == ("v1", "rollback")
    assert reg.history()[-1]["pinned"] is True
    # the trainer publishing a child of the version rolled back from changes nothing
    assert reg.promote("v3") is False
    assert reg.active_version() == "v1"


def test_an_operator_activation_moves_the_pin(tmp_path: Path) -> None:
    reg = _three_versions(tmp_path)
    reg.pin("v1", reason="incident 42")
    assert reg.active_version() == "v1" and reg.pinned().reason == "incident 42"  # type: ignore[union-attr]
    reg.activate("v3")
    pin = reg.pinned()
    assert pin is not None and pin.version == "v3" and reg.active_version() == "v3"
    assert reg.promote("v2") is False and reg.active_version() == "v3"
    with pytest.raises(VersionNotFound):
        reg.pin("nope")
    assert reg.pinned().version == "v3"  # type: ignore[union-attr]


def test_a_damaged_pin_file_holds_the_active_version(tmp_path: Path) -> None:
    reg = _three_versions(tmp_path)
    reg.pin("v1")
    reg.pin_file.write_text("{not json")
    assert reg.promote("v2") is False and reg.active_version() == "v1"
    assert reg.unpin() is not None and reg.promote("v2") is True
