"""One filesystem abstraction for everything the jobs and the control plane write or read.

Paths may be local (`/data/x`, `data/x`) or URIs that `pyarrow.fs` understands (`s3://`, `gs://`,
`hdfs://`, `file://`); `s3a://`, Spark's name for S3, means the same objects as `s3://`. Local
paths are made absolute so that a job and Airflow agree on them.

S3 is reached with the standard AWS settings and chain, as Spark's S3A is (`session.py`):
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or a profile, `AWS_PROFILE`), `AWS_REGION`, and
`AWS_ENDPOINT_URL` for an S3-compatible server. pyarrow's filesystems have no conditional writes;
`Location.conditional()` gives the ones S3 has (`If-None-Match`, `If-Match`) through boto3, for
the leases (`lease.py`).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyarrow import fs as pafs

#: URI schemes that name S3 objects: pyarrow's own and the one Spark's S3A connector reads.
S3_SCHEMES = ("s3", "s3a")


def _is_uri(path: str) -> bool:
    return "://" in path


def scheme_of(path: str) -> str:
    """A URI's scheme, lower-case (`s3a`, `hdfs`, ...); `""` for a local path."""
    return path.split("://", 1)[0].lower() if _is_uri(path) else ""


def is_s3(path: str) -> bool:
    """Whether a path is an S3 URI (`s3://` or `s3a://`)."""
    return scheme_of(path) in S3_SCHEMES


@dataclass(frozen=True)
class Location:
    """A path on some filesystem: the pair `pyarrow.fs` works with."""

    filesystem: pafs.FileSystem
    path: str

    @classmethod
    def of(cls, path: str) -> Location:
        """Resolve a local path or URI."""
        if is_s3(path):
            path = "s3://" + path.split("://", 1)[1]
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

    def conditional(self) -> ConditionalObject | None:
        """This file as an object with conditional writes, on S3; None on a local filesystem.

        Raises `ConditionalWritesUnavailable` on any other filesystem (GCS, HDFS, ...): this
        layer has no conditional writes there.
        """
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            return None
        if isinstance(self.filesystem, pafs.S3FileSystem):
            bucket, _, key = self.path.lstrip("/").partition("/")
            return ConditionalObject(bucket, key)
        raise ConditionalWritesUnavailable(
            f"{self.filesystem.type_name} ({self.path}): streamops has no conditional writes "
            "on this filesystem"
        )

    def __str__(self) -> str:
        return self.path


class ConditionalWritesUnavailable(Exception):
    """The store of a path does not honour conditional writes; the message names the store."""


@dataclass(frozen=True)
class Tagged:
    """An object's content and the ETag that a conditional write must name to replace it."""

    data: bytes
    etag: str


_PRECONDITION_FAILED = 412
_CONFLICT = 409  # S3's answer to a conditional write racing another one on the same key
_NOT_FOUND = 404
# The stores found to honour conditional writes, by (endpoint, bucket): probed once per process.
_honouring: dict[tuple[str, str], bool] = {}


# The settings a boto3 client is made from; a client is made again when one of them changes.
_CLIENT_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_clients: dict[tuple[str | None, ...], Any] = {}


def s3_client() -> Any:
    """A boto3 S3 client with the standard AWS settings and chain (`AWS_ENDPOINT_URL`, ...).

    One per process and settings: making one takes about 100 ms; clients are thread-safe.
    """
    settings = tuple(os.environ.get(name) for name in _CLIENT_SETTINGS)
    if settings not in _clients:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10, read_timeout=30
        )
        _clients[settings] = boto3.session.Session().client("s3", config=config)
    return _clients[settings]


class ConditionalObject:
    """One S3 object written only under a condition: absent (`If-None-Match: *`) or still the
    version read (`If-Match: <etag>`). A write whose condition fails changes nothing.

    A write that the client retried after its answer was lost may be refused by its own first
    attempt; each write then reads the object back, and counts as done if it holds its bytes.
    """

    def __init__(self, bucket: str, key: str, client: Any = None) -> None:
        self.bucket = bucket
        self.key = key
        self._client = client

    @property
    def client(self) -> Any:
        """The boto3 client, made at first use."""
        if self._client is None:
            self._client = s3_client()
        return self._client

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @staticmethod
    def _status(error: Exception) -> int:
        response = getattr(error, "response", None) or {}
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)

    def read(self) -> Tagged | None:
        """The object's content and ETag, or None when it does not exist."""
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as err:
            if self._status(err) == _NOT_FOUND:
                return None
            raise OSError(f"reading {self}: {err}") from err
        return Tagged(got["Body"].read(), str(got["ETag"]))

    def _put(self, data: bytes, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            put = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **condition)
        except ClientError as err:
            if self._status(err) in (_PRECONDITION_FAILED, _CONFLICT, _NOT_FOUND):
                now = self.read()
                return now.etag if now is not None and now.data == data else None
            raise OSError(f"writing {self}: {err}") from err
        return str(put["ETag"])

    def create(self, data: bytes) -> str | None:
        """Write the object if it does not exist; its new ETag, or None if it existed."""
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, etag: str) -> str | None:
        """Overwrite the object if its ETag is still `etag`; the new ETag, or None if not."""
        return self._put(data, IfMatch=etag)

    def delete(self, etag: str) -> bool:
        """Delete the object if its ETag is still `etag`. False if it changed (or was gone)."""
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
        except ClientError as err:
            if self._status(err) in (_PRECONDITION_FAILED, _CONFLICT, _NOT_FOUND):
                return False
            raise OSError(f"deleting {self}: {err}") from err
        return True

    def honours_conditions(self) -> bool:
        """Whether the store refuses a create over an existing object and a write naming a
        wrong ETag, tried once per process and bucket on a probe object beside this one.

        A store that ignores the conditions (an older S3-compatible server, a proxy that drops
        the headers) would let two writers both win.
        """
        where = (str(self.client.meta.endpoint_url), self.bucket)
        if where not in _honouring:
            _honouring[where] = self._probe()
        return _honouring[where]

    def _probe(self) -> bool:
        from botocore.exceptions import ClientError

        probe = ConditionalObject(
            self.bucket, f"{self.key}.probe-{uuid.uuid4().hex}", client=self.client
        )
        first = probe.create(b"1")
        try:
            if first is None:
                return False
            for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0"'}):
                try:
                    self.client.put_object(
                        Bucket=self.bucket, Key=probe.key, Body=b"2", **condition
                    )
                except ClientError as err:
                    if self._status(err) not in (_PRECONDITION_FAILED, _CONFLICT):
                        return False
                else:
                    return False
            return True
        finally:
            with contextlib.suppress(ClientError):
                self.client.delete_object(Bucket=self.bucket, Key=probe.key)


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
