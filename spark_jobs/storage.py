"""One filesystem abstraction for everything the jobs and the control plane write or read.

Paths may be local (`/data/x`, `data/x`) or URIs that `pyarrow.fs` understands (`s3://`, `gs://`,
`hdfs://`, `file://`). Local paths are made absolute so that a job and Airflow agree on them.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass

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
            self.filesystem.move(tmp.path, self.path)
        except BaseException:
            if tmp.exists():
                self.filesystem.delete_file(tmp.path)
            raise

    def write_text_atomic(self, text: str) -> None:
        """`write_bytes_atomic` for UTF-8 text."""
        self.write_bytes_atomic(text.encode("utf-8"))

    def __str__(self) -> str:
        return self.path
