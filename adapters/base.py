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

import bz2
import gzip
import io
import lzma
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, ClassVar
from urllib.parse import urlsplit

import pyarrow as pa
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import Event
from posthog_migrate.mapping import ColumnMapping, RowMapper
from pyarrow import fs as pafs

# Rows handed to the mapper per chunk: large enough to amortise per-chunk work, small enough to bound memory.
ROWS_PER_CHUNK = 5_000
# ...and a chunk is cut sooner when its rows' raw bytes reach this: 5,000 rows of a megabyte each would
# otherwise be held at once.
MAX_CHUNK_BYTES = 4 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
# The compressions read, recognised by their first bytes (exports are often renamed); the endings name them
# too, so that ``events.csv.zst`` is recognised as CSV. bzip2's magic is "BZh", a block size digit, then the
# first block's (or, for an empty stream, the end's) own magic: "BZh" alone could begin a CSV header.
COMPRESSION_ENDINGS = (".gz", ".gzip", ".bz2", ".xz", ".zst", ".zstd")
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_BLOCK_MAGICS = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")
# How much of an unreadable row is copied into the rejects file.
MAX_RAW_CHARS_IN_REJECT = 10_000
# The longest row read (a line, a CSV line, a JSON array's element). A longer one is rejected as
# row_too_large without ever being held whole, so one runaway line cannot take all the memory. PostHog
# refuses events over 1 MB anyway; 16 MiB leaves room for columns the mapping drops.
MAX_ROW_BYTES = 16 * 1024 * 1024
# Read size while passing over the rest of a row too large to keep.
SKIP_BYTES = 1 << 20


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


def without_compression(name: str) -> str:
    """``events.csv.gz`` → ``events.csv``: the name whose ending says the format (give it lower case)."""
    for ending in COMPRESSION_ENDINGS:
        if name.endswith(ending):
            return name.removesuffix(ending)
    return name


def too_large_row(excerpt: bytes | str, size: int) -> BadRow:
    """The rejects entry of a row over MAX_ROW_BYTES: its size and its first characters."""
    if isinstance(excerpt, bytes):
        excerpt = excerpt[:MAX_RAW_CHARS_IN_REJECT].decode("utf-8", errors="replace")
    return BadRow("row_too_large", f"a row of {size:,} bytes; rows over {MAX_ROW_BYTES >> 20} MiB are not read "
                  "(split it, or drop the column that makes it this big)",
                  excerpt[:MAX_RAW_CHARS_IN_REJECT])


def in_chunks(rows: Iterator[tuple[int, dict | BadRow, int]]) -> Iterator[RowChunk]:
    """(row number, record, its size in bytes) cut into chunks of ROWS_PER_CHUNK rows or MAX_CHUNK_BYTES."""
    chunk: RowChunk = []
    chunk_bytes = 0
    for number, record, size in rows:
        chunk.append((number, record))
        chunk_bytes += size
        if len(chunk) >= ROWS_PER_CHUNK or chunk_bytes >= MAX_CHUNK_BYTES:
            yield chunk
            chunk, chunk_bytes = [], 0
    if chunk:
        yield chunk


def bounded_lines(stream: IO[bytes]) -> Iterator[bytes | BadRow]:
    """The lines of a binary stream, each whole, except a line over MAX_ROW_BYTES: that one comes as a
    ``row_too_large`` BadRow, and is passed over a megabyte at a time, never held whole."""
    readline = stream.readline
    while line := readline(MAX_ROW_BYTES + 1):
        if len(line) <= MAX_ROW_BYTES or line.endswith(b"\n"):
            yield line
            continue
        size = len(line)
        while rest := readline(SKIP_BYTES):
            size += len(rest)
            if rest.endswith(b"\n"):
                break
        yield too_large_row(line, size)


# Warnings about a file that are neither a rejected nor a filtered row (duplicate column names, a zip member
# that cannot be read...): a reader notes them with note_warning(); the prepare loop collects them into the
# file's PrepareStats.warnings, which inspect and the run summary show. Each text names its file.
_pending_warnings: set[str] = set()


def note_warning(text: str) -> None:
    """Tell the user something about the file being read, in a text that names the file. A file's warning
    counts once however often it is noted (its header is read again on resume, or by a columns() check)."""
    _pending_warnings.add(text)


def take_warnings() -> set[str]:
    """The warnings noted since the last call (a process reads one file at a time)."""
    taken = set(_pending_warnings)
    _pending_warnings.clear()
    return taken


def unique_column_names(names: list[str], uri: str) -> list[str]:
    """Column names with the second, third... of a repeated name renamed ``plan_2``, ``plan_3``, so that no
    value is silently lost to a later column of the same name; a warning names the file and the columns."""
    if len(set(names)) == len(names):
        return names
    taken = set(names)
    seen: set[str] = set()
    unique, renamed = [], []
    for name in names:
        if name not in seen:
            seen.add(name)
            unique.append(name)
            continue
        number = 2
        while f"{name}_{number}" in taken:
            number += 1
        taken.add(f"{name}_{number}")
        unique.append(f"{name}_{number}")
        renamed.append(f"{name} → {name}_{number}")
    note_warning(f"{uri}: repeated column names, both kept: {', '.join(renamed)}")
    return unique


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
    """(the archive's uri, the member's name) for a zip member's uri; (uri, None) for a plain file.

    Only a ``.zip`` archive is split: ``!/`` in a folder's name (``exports!/2024/a.csv``) is just a name.
    """
    start = 0
    while (at := uri.find(ZIP_MEMBER_SEPARATOR, start)) >= 0:
        if uri[:at].lower().endswith(".zip"):
            return uri[:at], uri[at + len(ZIP_MEMBER_SEPARATOR):]
        start = at + 1
    return uri, None


def open_seekable(uri: str) -> IO[bytes]:
    """A random-access handle on a local path or remote URI (zip archives need one)."""
    filesystem, path = filesystem_for(uri)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return open(path, "rb")
    return filesystem.open_input_file(path)


def open_binary(uri: str) -> IO[bytes]:
    """Open a local path, ``s3://``/``gs://`` URI or zip member for reading, transparently decompressing
    gzip, bzip2, xz and zstd.

    The compression is recognised by its magic bytes, not the file name: exports are often renamed.
    """
    archive, member = split_member(uri)
    if member is not None:
        stream: Any = _ZipMemberStream(archive, member)
    else:
        filesystem, path = filesystem_for(uri)
        # compression=None: pyarrow would otherwise gunzip by the name alone, failing on a renamed plain
        # file and bypassing the magic-byte check (and isal) below.
        stream = filesystem.open_input_stream(path, compression=None)
    return decompressed(io.BufferedReader(_ArrowStreamAdapter(stream), buffer_size=1 << 20), uri)


def decompressed(raw: IO[bytes], uri: str) -> IO[bytes]:
    """``raw`` itself, or a reader of its decompressed bytes when it starts with gzip's, bzip2's, xz's or
    zstd's magic bytes. ``uri`` names the file in the error a corrupt stream raises."""
    head = raw.peek(10)[:10]
    if head[:2] == GZIP_MAGIC:
        kind, reader = "gzip", gzip_reader(raw)
    elif head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in BZIP2_BLOCK_MAGICS:
        kind, reader = "bzip2", bz2.BZ2File(raw)
    elif head[:6] == XZ_MAGIC:
        kind, reader = "xz", lzma.LZMAFile(raw)  # noqa: SIM115 - closed by the stream returned
    elif head[:4] == ZSTD_MAGIC:
        kind, reader = "zstd", _ArrowStreamAdapter(pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd"))
    else:
        return raw
    return io.BufferedReader(_DecompressedStream(reader, raw, uri, kind), buffer_size=1 << 20)


def gzip_reader(raw: IO[bytes]) -> IO[bytes]:
    """A gzip decompressor over ``raw``: isal's when installed (3-4x faster than zlib), else the stdlib's."""
    try:
        from isal import igzip  # 3-4x faster than zlib when installed

        return igzip.GzipFile(fileobj=raw, mode="rb")
    except ImportError:
        return gzip.GzipFile(fileobj=raw, mode="rb")


class _DecompressedStream(io.RawIOBase):
    """A decompressing reader whose errors name the file (a ConfigError, not a traceback), and whose close
    also closes the file below it (GzipFile and BZ2File leave a ``fileobj`` open)."""

    def __init__(self, reader: IO[bytes], raw: IO[bytes], uri: str, kind: str):
        self._reader = reader
        self._raw = raw
        self._uri = uri
        self._kind = kind

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._reader.readinto(buffer)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as error:
            raise ConfigError(
                f"{self._uri}: the {self._kind} data is corrupt or truncated ({error}); re-download or "
                "re-compress it"
            ) from None

    def close(self) -> None:
        try:
            self._reader.close()
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
        if (mapping.profiles or mapping.group_profiles) and type(self).to_events is not Adapter.to_events:
            raise ConfigError(f"[profiles] and [group_profiles] map CSV, JSON lines or Parquet tables; the {self.name} "
                              "format maps its own rows (see the README's People section)")
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
