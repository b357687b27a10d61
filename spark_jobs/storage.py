"""One filesystem abstraction for everything the jobs and the control plane write or read.

Paths may be local (`/data/x`, `data/x`) or URIs that `pyarrow.fs` understands (`s3://`, `gs://`,
`hdfs://`, `file://`). Local paths are made absolute so that a job and Airflow agree on them.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
from pyarrow import fs as pafs


def _is_uri(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class Location:
    """A path on some filesystem: the pair `pyarrow.fs` works with."""

    filesystem: pafs.FileSystem
    path: str

    @classmethod
    def of(cls, path: str) -> Location:
        """Resolve a local path or URI."""
        if _is_uri(path):
            filesystem, inner = pafs.FileSystem.from_uri(path)
            return cls(filesystem, inner.rstrip("/") or "/")
        return cls(pafs.LocalFileSystem(), os.path.abspath(path))

    def child(self, *parts: str) -> Location:
        """A path below this one."""
        return Location(self.filesystem, posixpath.join(self.path, *parts))

    @property
    def name(self) -> str:
        """The last path component."""
        return posixpath.basename(self.path)

    def exists(self) -> bool:
        """Whether anything (file or folder) is at this path."""
        return bool(self.filesystem.get_file_info(self.path).type != pafs.FileType.NotFound)

    def is_dir(self) -> bool:
        """Whether a folder is at this path."""
        return bool(self.filesystem.get_file_info(self.path).type == pafs.FileType.Directory)

    def list(self) -> list[pafs.FileInfo]:
        """The direct children of this folder, sorted by name; empty when it does not exist."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        return sorted(self.filesystem.get_file_info(selector), key=lambda info: info.base_name)

    def mkdirs(self) -> None:
        """Create this folder and its parents."""
        self.filesystem.create_dir(self.path, recursive=True)

    def read_bytes(self) -> bytes:
        """The whole content of this file."""
        with self.filesystem.open_input_stream(self.path) as stream:
            return bytes(stream.read())

    def read_text(self) -> str:
        """The content of this file as UTF-8 text."""
        return self.read_bytes().decode("utf-8")

    def write_bytes_atomic(self, data: bytes) -> None:
        """Replace this file's content so that a reader sees the old or the new bytes, never a mix.

        The bytes go to a hidden temporary file in the same folder, which is then renamed over the
        target (atomic on POSIX filesystems and HDFS; object stores have no partial objects).
        """
        parent = Location(self.filesystem, posixpath.dirname(self.path))
        parent.mkdirs()
        tmp = parent.child(f".{self.name}.{uuid.uuid4().hex}.tmp")
        try:
            with self.filesystem.open_output_stream(tmp.path) as stream:
                stream.write(data)
            tmp.move_to(self)
        except BaseException:
            if tmp.exists():
                self.filesystem.delete_file(tmp.path)
            raise

    def write_text_atomic(self, text: str) -> None:
        """`write_bytes_atomic` for UTF-8 text."""
        self.write_bytes_atomic(text.encode("utf-8"))

    def move_to(self, target: Location) -> None:
        """Rename this file to `target` (same filesystem), replacing a file there.

        One atomic rename on POSIX filesystems and HDFS, which keeps the file's mtime; a copy and
        a delete on object stores, where the copy gets a new one.
        """
        self.filesystem.move(self.path, target.path)

    def with_read_fallback(self, fallback: Callable[[str], str | None]) -> Location:
        """This location on a view of its filesystem where opening (or asking about) a file that
        is gone opens `fallback(path)` instead, when that names a path (`ReadFallback`)."""
        return Location(pafs.PyFileSystem(ReadFallback(self.filesystem, fallback)), self.path)

    def __str__(self) -> str:
        return self.path


class ReadFallback(pafs.FileSystemHandler):
    """A filesystem (through `pyarrow.fs.PyFileSystem`) that reads a file that is gone from
    `fallback(path)` instead, under its first path.

    So a reader that listed a file before it moved still opens it afterwards, whether it opens
    it itself or hands the paths to pyarrow (a dataset asks for each path's info first, then
    opens it). A file already open stays readable on POSIX filesystems whatever happens to its
    name. Everything else goes to the filesystem underneath unchanged.
    """

    def __init__(self, base: pafs.FileSystem, fallback: Callable[[str], str | None]) -> None:
        self.base = base
        self.fallback = fallback

    def get_type_name(self) -> str:
        return f"{self.base.type_name}+fallback"

    def normalize_path(self, path: str) -> str:
        return str(self.base.normalize_path(path))

    def get_file_info(self, paths: str | list[str]) -> list[pafs.FileInfo]:
        wanted = [paths] if isinstance(paths, str) else list(paths)
        infos: list[pafs.FileInfo] = list(self.base.get_file_info(wanted))
        for i, info in enumerate(infos):
            other = self.fallback(info.path) if info.type == pafs.FileType.NotFound else None
            if other is not None:
                moved = self.base.get_file_info(other)
                if moved.type != pafs.FileType.NotFound:
                    infos[i] = pafs.FileInfo(
                        wanted[i], moved.type, mtime_ns=moved.mtime_ns, size=moved.size
                    )
        return infos

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return list(self.base.get_file_info(selector))

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self._open(path, self.base.open_input_file)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self._open(path, self.base.open_input_stream)

    def _open(self, path: str, opener: Callable[[str], pa.NativeFile]) -> pa.NativeFile:
        try:
            return opener(path)
        except FileNotFoundError as gone:
            other = self.fallback(path)
            if other is not None:
                with contextlib.suppress(FileNotFoundError):
                    return opener(other)
            raise gone

    def create_dir(self, path: str, recursive: bool) -> None:
        self.base.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.base.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.base.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self.base.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self.base.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.base.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.base.copy_file(src, dest)

    def open_output_stream(self, path: str, metadata: dict[str, str]) -> pa.NativeFile:
        return self.base.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: dict[str, str]) -> pa.NativeFile:
        stream: pa.NativeFile = self.base.open_append_stream(path, metadata=metadata)
        return stream
