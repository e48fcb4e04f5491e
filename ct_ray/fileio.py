"""Files and storage: atomic local writes, and one ``Location`` type for a local path or a pyarrow URI.

A reader never sees a half-written file: local files are written to a temporary name beside the target and renamed
onto it; objects in a store (``s3://``, ``gs://``) are written with one upload, which the store makes visible whole.
Files and folders get the process umask (no private 0600 / 0700 modes), so storage shared between users or nodes
works. Store URIs take pyarrow's options in their query, e.g.
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``; credentials come from the usual AWS
environment variables or config files.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import pyarrow.fs as pafs

from ct_ray.errors import UserError


class StorageError(UserError, OSError):
    """A storage location that cannot be reached, listed, read or written; the message names it."""


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mkdirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` with the process umask."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it is renamed onto ``path`` (mode 0666 minus the umask),
    on error removed."""
    target = Path(path)
    mkdirs(target.parent)
    tmp_path = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


@dataclass(frozen=True)
class Location:
    """A folder or file in local storage or in a store that pyarrow reaches (``s3://``, ``gs://``, ...).

    ``uri`` is what the user wrote (a local path made absolute, or the URI with its query); ``fs`` and ``path`` are
    pyarrow's filesystem and the path on it. Locations pickle, so they travel to Ray tasks.
    """

    uri: str
    fs: pafs.FileSystem
    path: str

    @classmethod
    def of(cls, location: "str | os.PathLike | Location") -> "Location":
        if isinstance(location, Location):
            return location
        text = str(location)
        if not is_uri(text):
            local = str(Path(text).expanduser().resolve())
            return cls(local, pafs.LocalFileSystem(), local)
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise StorageError(f"{text}: not a storage URI pyarrow can open: {exc}") from None
        return cls(text, fs, path.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def child(self, *parts: str) -> "Location":
        """``self / part / ...`` (the URI keeps its query)."""
        suffix = "/".join(p.strip("/") for p in parts if p)
        if self.is_local:
            joined = str(Path(self.path, suffix))
            return Location(joined, self.fs, joined)
        base, sep, query = self.uri.partition("?")
        return Location(f"{base.rstrip('/')}/{suffix}{sep}{query}", self.fs, f"{self.path}/{suffix}")

    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot be reached: {exc}") from None

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def size(self) -> int:
        return int(self._info().size or 0)

    def mkdirs(self) -> "Location":
        if self.is_local:
            mkdirs(self.path)
        else:
            try:
                self.fs.create_dir(self.path, recursive=True)
            except OSError as exc:
                raise StorageError(f"{self.uri}: cannot create it: {exc}") from None
        return self

    def list(self) -> list["Location"]:
        """The entries directly inside this folder (none when it does not exist), sorted by name."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot be listed: {exc}") from None
        return [self.child(info.path.rsplit("/", 1)[-1]) for info in sorted(infos, key=lambda i: i.path)]

    def open_input(self) -> IO[bytes]:
        try:
            return self.fs.open_input_file(self.path)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot be read: {exc}") from None

    def read_bytes(self) -> bytes:
        with self.open_input() as handle:
            return handle.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Writes the whole file atomically (a rename locally, one upload in a store)."""
        if self.is_local:
            atomic_write_bytes(self.path, data)
            return
        try:
            with self.fs.open_output_stream(self.path) as handle:
                handle.write(data)
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot be written: {exc}") from None

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def upload(self, local: str | os.PathLike) -> None:
        """Copies a local file here (atomically)."""
        if self.is_local:
            with atomic_path(self.path) as tmp:
                with open(local, "rb") as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 22):
                        dst.write(chunk)
            return
        try:
            pafs.copy_files(str(local), self.path, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot upload {local}: {exc}") from None

    def download(self, local: str | os.PathLike) -> Path:
        """Copies this file to a local path (atomically) and returns it."""
        target = Path(local)
        with atomic_path(target) as tmp:
            with self.open_input() as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
        return target

    def delete(self) -> None:
        try:
            if self.is_dir():
                self.fs.delete_dir(self.path)
            elif self.exists():
                self.fs.delete_file(self.path)
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot delete it: {exc}") from None

    def __str__(self) -> str:
        return self.uri


def cache_root() -> Path:
    """Where URIs are fetched to on this node: ``CT_RAY_CACHE``, else ``~/.cache/ct-ray``."""
    return Path(os.environ.get("CT_RAY_CACHE", Path.home() / ".cache" / "ct-ray"))


def _cache_path(uri: str) -> Path:
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    name = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "root"
    return cache_root() / "fetched" / f"{digest}-{name}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    mkdirs(path.parent)
    with open(f"{path}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_file(source: Location, target: Path) -> dict:
    """One file, downloaded atomically and checked: its size against the store's, and its SHA-256 against a
    ``<file>.sha256`` beside it in the store when there is one."""
    size = source.size()
    source.download(target)
    if target.stat().st_size != size:
        target.unlink(missing_ok=True)
        raise StorageError(f"{source}: downloaded {target.stat().st_size} bytes, the store has {size}")
    digest = file_sha256(target)
    sidecar = Location.of(source.uri.replace(source.path, source.path + ".sha256", 1)) if not source.is_local \
        else Location.of(source.path + ".sha256")
    if sidecar.is_file():
        expected = sidecar.read_text().split()[0].strip()
        if expected != digest:
            target.unlink(missing_ok=True)
            raise StorageError(f"{source}: checksum {digest[:12]}... does not match {sidecar.name} "
                               f"({expected[:12]}...)")
    return {"size": size, "sha256": digest}


def fetch(uri: str) -> Path:
    """A local copy of a file or a folder given as a store URI (a teacher checkpoint, a dataset), fetched once per
    node into ``cache_root()`` and verified (sizes; SHA-256 where the store holds ``.sha256`` files); later calls,
    from any process on the node, reuse it. A local path is returned as it is."""
    import json

    if not is_uri(uri):
        return Path(uri)
    source = Location.of(uri)
    target = _cache_path(uri)
    marker = Path(f"{target}.fetched.json")
    with _locked(target):
        if marker.is_file():
            return target
        if source.is_file():
            record = {"uri": uri, "files": {source.name: _fetch_file(source, target)}}
        elif source.is_dir():
            try:
                infos = source.fs.get_file_info(pafs.FileSelector(source.path, recursive=True))
            except OSError as exc:
                raise StorageError(f"{uri}: cannot be listed: {exc}") from None
            files = {}
            for info in infos:
                if info.type != pafs.FileType.File or info.path.endswith(".sha256"):
                    continue
                relative = info.path[len(source.path):].lstrip("/")
                files[relative] = _fetch_file(source.child(relative), target / relative)
            record = {"uri": uri, "files": files}
        else:
            raise StorageError(f"{uri}: no such file or folder in the store")
        atomic_write_text(marker, json.dumps(record, indent=1))
    return target
