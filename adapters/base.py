"""What an adapter is: it reads one source file's rows and maps each row to PostHog events.

An adapter knows its format and nothing about sorting, batching or HTTP. It yields rows in chunks
(``list[(row_number, record)]``) so the pipeline can map them without a Python call per row through
every layer; a row that cannot even be read comes as a :class:`BadRow` so it ends in the rejects file
with its number instead of stopping the file. Row numbers start at 1 and count records, not lines: a
CSV's header is not a record.

To write a new adapter: subclass :class:`Adapter`, set ``name`` and ``extensions``, implement
``read`` (and ``to_events`` unless the generic column mapping fits), and register it under the
``posthog_migrate.adapters`` entry point group (see the README).
"""

from __future__ import annotations

import gzip
import io
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, ClassVar
from urllib.parse import urlsplit

import pyarrow as pa
from pyarrow import fs as pafs

from migrate.errors import ConfigError
from migrate.event import Event
from migrate.mapping import ColumnMapping, RowMapper

# Rows handed to the mapper per chunk: large enough to amortise per-chunk work, small enough to bound memory.
ROWS_PER_CHUNK = 5_000
GZIP_MAGIC = b"\x1f\x8b"
# How much of an unreadable row is copied into the rejects file.
MAX_RAW_CHARS_IN_REJECT = 10_000


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One input file. ``index`` is its place in the job's sorted file list: the sort's tie-breaker."""

    uri: str
    index: int
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return self.uri


@dataclass(slots=True)
class BadRow:
    """A row the reader could not decode (bad JSON, wrong field count, bad encoding...)."""

    reason: str
    detail: str
    raw: Any


RowChunk = list[tuple[int, "dict | BadRow"]]


# Where the AWS SDKs look for a custom S3 endpoint (MinIO, a local test server...); pyarrow's URI parser
# does not read them, so we pass them on.
S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def file_name(uri: str) -> str:
    """A source's name for recognising its format by ending: lower case, without a URI's ``?query``."""
    return (uri.split("?", 1)[0] if "://" in uri else uri).lower()


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path of a local path or a ``s3://``/``gs://`` URI.

    For ``s3://`` an endpoint from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` is honoured (unless the URI
    names one itself with ``?endpoint_override=``); credentials come from the usual AWS environment.
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        endpoint = next((os.environ[v] for v in S3_ENDPOINT_VARIABLES if os.environ.get(v)), None)
        if uri.startswith("s3://") and endpoint and "endpoint_override" not in uri:
            parts = urlsplit(endpoint)
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            filesystem = pafs.S3FileSystem(endpoint_override=parts.netloc or parts.path,
                                           scheme=parts.scheme or "https", region=region)
            return filesystem, urlsplit(uri).netloc + urlsplit(uri).path
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as error:
        raise ConfigError(f"cannot open {uri}: {error}") from None


# A file inside a zip archive is addressed as ``archive.zip!/member/name.json.gz``.
ZIP_MEMBER_SEPARATOR = "!/"


def split_member(uri: str) -> tuple[str, str | None]:
    """(the archive's uri, the member's name) for a zip member's uri; (uri, None) for a plain file."""
    archive, separator, member = uri.partition(ZIP_MEMBER_SEPARATOR)
    return (archive, member) if separator else (uri, None)


def open_seekable(uri: str) -> IO[bytes]:
    """A random-access handle on a local path or remote URI (zip archives need one)."""
    filesystem, path = filesystem_for(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return open(path, "rb")
    return filesystem.open_input_file(path)


def open_binary(uri: str) -> IO[bytes]:
    """Open a local path, ``s3://``/``gs://`` URI or zip member for reading, transparently gunzipping.

    Gzip is recognised by its magic bytes, not the file name: exports are often renamed.
    """
    archive, member = split_member(uri)
    if member is not None:
        stream: Any = _ZipMemberStream(archive, member)
    else:
        filesystem, path = filesystem_for(uri)
        # compression=None: pyarrow would otherwise gunzip by the name alone, failing on a renamed plain
        # file and bypassing the magic-byte check (and isal) below.
        stream = filesystem.open_input_stream(path, compression=None)
    raw = io.BufferedReader(_ArrowStreamAdapter(stream), buffer_size=1 << 20)
    if raw.peek(2)[:2] == GZIP_MAGIC:
        return io.BufferedReader(_GzipStream(gzip_reader(raw), raw, uri), buffer_size=1 << 20)
    return raw


def gzip_reader(raw: IO[bytes]) -> IO[bytes]:
    """A gzip decompressor over ``raw``: isal's when installed (3-4x faster than zlib), else the stdlib's."""
    try:
        from isal import igzip  # 3-4x faster than zlib when installed

        return igzip.GzipFile(fileobj=raw, mode="rb")
    except ImportError:
        return gzip.GzipFile(fileobj=raw, mode="rb")


class _GzipStream(io.RawIOBase):
    """A gzip reader whose decompression errors name the file (a ConfigError, not a traceback), and
    whose close also closes the file below it (GzipFile leaves a ``fileobj`` open)."""

    def __init__(self, gz: IO[bytes], raw: IO[bytes], uri: str):
        self._gz = gz
        self._raw = raw
        self._uri = uri

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._gz.readinto(buffer)
        except (OSError, EOFError, zlib.error) as error:
            raise ConfigError(
                f"{self._uri}: the gzip data is corrupt or truncated ({error}); re-download or re-compress it"
            ) from None

    def close(self) -> None:
        try:
            self._gz.close()
        finally:
            self._raw.close()
            super().close()


class _ZipMemberStream:
    """One member of a zip archive, read as a stream; closing it closes the archive and its file."""

    def __init__(self, archive: str, member: str):
        self._file = open_seekable(archive)
        try:
            self._zip = zipfile.ZipFile(self._file)
            self._member = self._zip.open(member)
        except (zipfile.BadZipFile, KeyError, OSError) as error:
            self._file.close()
            raise ConfigError(f"{archive}: cannot read {member} from the zip archive ({error})") from None

    def read(self, size: int) -> bytes:
        try:
            return self._member.read(size)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            raise ConfigError(f"the zip member is damaged ({error}); re-download the archive") from None

    def close(self) -> None:
        self._member.close()
        self._zip.close()
        self._file.close()


_input_bytes_read = 0


def input_bytes_read() -> int:
    """Bytes this process has read from input files so far (as stored: gzip'd bytes for a .gz), for the
    reading progress bar. Counted once per read call of up to 1 MiB, never per row."""
    return _input_bytes_read


class _ArrowStreamAdapter(io.RawIOBase):
    """Lets the stdlib's buffered, gzip and csv machinery read a pyarrow input stream."""

    def __init__(self, stream: Any):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        global _input_bytes_read
        data = self._stream.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        _input_bytes_read += size
        return size

    def close(self) -> None:
        self._stream.close()
        super().close()


class Adapter:
    """Base class: reads a format, maps records with the job's column mapping unless overridden."""

    name: ClassVar[str] = ""
    # File endings that --format auto recognises (compression endings such as .gz are stripped first).
    extensions: ClassVar[tuple[str, ...]] = ()
    # The tag inside content-derived uuids; generic formats share one so re-encoding a file keeps uuids.
    source_tag: ClassVar[str] = "generic"
    # The settings this format reads from the mapping's [source] table (Segment's group_type...). Any other key
    # there is refused, so that a misspelt setting is never ignored: a plugin lists its own here.
    known_source_options: ClassVar[tuple[str, ...]] = ()
    # What recognises() looks for, in words, for --format auto's explanation: "a Mixpanel export (...)".
    recognised_shape: ClassVar[str] = ""

    def __init__(self, mapping: ColumnMapping):
        mapping.check_source_options(self.name, self.known_source_options)
        self.mapping = mapping
        self.mapper = RowMapper(mapping, self.source_tag)

    @classmethod
    def recognises(cls, record: dict) -> bool:
        """Whether ``record`` is unmistakably one of this format's rows. ``record`` is as the generic reader of
        the file's ending gives it (JSON lines, CSV or Parquet). ``--format auto`` shows the first rows of the
        inputs to every registered adapter and reads them in the format that recognises most of them, and a
        run stops when most of its first rows fail and another format recognises them. The generic formats
        recognise nothing: a file whose rows no format claims is read by its ending."""
        return False

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        """Yield the file's rows in chunks; unreadable rows as BadRow. Raise ConfigError if the whole
        file is unreadable in this format (so the user learns to fix --format, not row by row)."""
        raise NotImplementedError

    def columns(self, source: SourceFile) -> list[str] | None:
        """The column names, for checking the mapping before the run; None when rows vary (JSON)."""
        return None

    def extra_inputs(self) -> list[str]:
        """Files besides the sources that the mapping depends on (lookup tables): fingerprinted with the
        job, so a resume notices when one of them changed."""
        return []

    def to_events(self, record: dict) -> list[Event]:
        """Map one record to its events (usually one). Raise Rejection or Filtered."""
        return [self.mapper.map(record)]

    def person_of(self, record: dict) -> str | None:
        """The distinct_id of the record's own event, when it is cheap to tell before mapping (None: not
        known until the record is mapped). ``--shard`` uses it to pass over other shards' records without
        mapping them, so N machines each spend mapping time on their own shard only. An override must
        use the same code as ``to_events``: every shard decides a record's shard by this answer."""
        return None
