"""Crash-safe file writes shared by the model registry and the trainers' checkpoints:
write to a temporary name, fsync, rename, fsync the directory — so after a power cut
or SIGKILL a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file below `root`, then every directory bottom-up, root included."""
    dirs = [root]
    for p in root.rglob("*"):
        if p.is_file():
            fsync_path(p)
        elif p.is_dir():
            dirs.append(p)
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        fsync_path(d)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically and durably."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)
