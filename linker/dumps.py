"""Opening knowledge-base dumps: plain, .bz2 or .gz, with progress on the compressed
bytes and errors that name the offset.

`DumpReader` wraps the raw file so `position` is always the compressed byte offset
(what a progress bar and an error message about a truncated archive need), while
`consumed` counts uncompressed bytes handed to the parser.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import zlib
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast

from linker.errors import DumpError


class DumpReader(io.RawIOBase):
    """A readable binary stream over a possibly compressed dump."""

    def __init__(self, path: str | os.PathLike[str], *, progress: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        try:
            self._raw: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise DumpError(f"{self.path}: cannot open: {exc.strerror}") from None
        self.size = self.path.stat().st_size
        name = self.path.name.lower()
        self._stream: IO[bytes]
        if name.endswith(".bz2"):
            self._stream = bz2.BZ2File(self._raw)
            self.kind = "bzip2"
        elif name.endswith(".gz"):
            self._stream = cast(IO[bytes], gzip.GzipFile(fileobj=self._raw))
            self.kind = "gzip"
        else:
            self._stream = self._raw
            self.kind = "plain"
        self.consumed = 0
        self._bar: Any = None
        self._last = 0
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=self.size, desc=progress, unit="B", unit_scale=True)

    @property
    def position(self) -> int:
        """Offset in the file on disk (compressed bytes)."""
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return self.size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self._stream.read(size if size is not None else -1)
        except EOFError:
            raise DumpError(
                f"{self.path}: truncated {self.kind} archive: it ends at byte {self.size} "
                f"before its end-of-stream marker (after {self.consumed} uncompressed bytes)"
            ) from None
        except (OSError, zlib.error) as exc:
            raise DumpError(
                f"{self.path}: corrupt {self.kind} data near byte {self.position} "
                f"(after {self.consumed} uncompressed bytes): {exc}"
            ) from None
        self.consumed += len(data)
        self._tick()
        return data

    def readline(self, size: int | None = -1) -> bytes:
        try:
            line = self._stream.readline(size if size is not None else -1)
        except EOFError:
            raise DumpError(
                f"{self.path}: truncated {self.kind} archive: it ends at byte {self.size} "
                f"before its end-of-stream marker (after {self.consumed} uncompressed bytes)"
            ) from None
        except (OSError, zlib.error) as exc:
            raise DumpError(
                f"{self.path}: corrupt {self.kind} data near byte {self.position}: {exc}"
            ) from None
        self.consumed += len(line)
        if self.consumed - self._last > 1 << 20:
            self._tick()
        return line

    def _tick(self) -> None:
        if self._bar is not None:
            pos = self.position
            self._bar.update(pos - self._bar.n)
        self._last = self.consumed

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._stream is not self._raw:
            self._stream.close()
        self._raw.close()
        super().close()

    def __enter__(self) -> DumpReader:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
