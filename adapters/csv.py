"""CSV with a header row (``.gz`` too). Every value is read as text; empty cells are absent values.

Numbers and booleans are recognised only in their canonical spelling, so ``"42"`` becomes 42 but a zip
code ``"02134"`` or an id ``"1e5"`` stays text: a migration must not corrupt identifiers.
"""

from __future__ import annotations

import csv
import io
import re
from collections import deque
from collections.abc import Iterator
from typing import Any, ClassVar

from posthog_migrate.adapters.base import (
    MAX_CHUNK_BYTES,
    MAX_RAW_CHARS_IN_REJECT,
    MAX_ROW_BYTES,
    ROWS_PER_CHUNK,
    SKIP_BYTES,
    Adapter,
    BadRow,
    RowChunk,
    SourceFile,
    file_name,
    open_binary,
    too_large_row,
    unique_column_names,
    without_compression,
)
from posthog_migrate.errors import ConfigError

# The stdlib default (128 KiB) would stop a file on one long JSON cell; events are capped below 1 MB anyway.
MAX_FIELD_CHARS = 16 * 1024 * 1024
_CANONICAL_INT = re.compile(r"0|-?[1-9]\d{0,17}")
_CANONICAL_FLOAT = re.compile(r"-?(0|[1-9]\d{0,17})\.(\d{1,15})")
csv.field_size_limit(MAX_FIELD_CHARS)
# A quoted field may hold newlines; one spanning more lines than this is a quote that never closed.
MAX_RECORD_LINES = 10_000
# No text header holds these; a binary file (Parquet: "PAR1\x15\x04...") whose first line happens to be
# valid UTF-8 does.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def infer_scalar(text: str) -> Any:
    """A cell's value: int, float or bool when its spelling is canonical, else the text itself."""
    if _CANONICAL_INT.fullmatch(text):
        return int(text)
    match = _CANONICAL_FLOAT.fullmatch(text)
    if match and not text.endswith("0"):
        value = float(text)
        # Only when the float keeps every digit: "12345678901234567.5" would silently become ...68.0.
        if f"{value:.{len(match.group(2))}f}" == text:
            return value
    if text == "true":
        return True
    if text == "false":
        return False
    return text


def _has_bad_encoding(cells: list[str]) -> bool:
    try:
        "".join(cells).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from surrogateescape: the bytes were not UTF-8
        return True
    return False


def _delimiter(uri: str) -> str:
    """Tab for ``.tsv`` (the format detection sends those here too), else comma."""
    return "\t" if without_compression(file_name(uri)).endswith(".tsv") else ","


def _raw_line(cells: list[str]) -> str:
    """The row as text for the rejects file, with undecodable bytes replaced (never lone surrogates)."""
    return _safe_text(",".join(cells)[:MAX_RAW_CHARS_IN_REJECT])


def _safe_text(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class _RunawayRecord(Exception):
    """A record still open after MAX_RECORD_LINES lines: a quote that never closes."""


class _LineTooLong(Exception):
    """A physical line over MAX_ROW_BYTES: passed over, never held whole."""

    def __init__(self, bad_row: BadRow):
        super().__init__(bad_row.detail)
        self.bad_row = bad_row


class _Lines:
    """Feeds the csv reader one physical line at a time and remembers the lines of the record it is reading.

    A quote opened and never closed makes the csv module read the rest of the file as one cell (and, in
    lenient mode, say nothing). Remembering the record's lines lets the reader give that record up,
    reject its first line, and read the following lines again as records of their own.
    """

    def __init__(self, text: Iterator[str]):
        self._text = text
        self.replay: deque[str] = deque()
        self.taken: list[str] = []
        self.chars_read = 0  # lets the reader cut a chunk of long rows before ROWS_PER_CHUNK

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.replay.popleft() if self.replay else self._read_line()
        self.taken.append(line)
        if len(self.taken) > MAX_RECORD_LINES:
            raise _RunawayRecord(f"a record still open after {MAX_RECORD_LINES:,} lines")
        return line

    def _read_line(self) -> str:
        # Bounded: a line of a gigabyte must not be read whole. (The bound counts characters here, which
        # is bytes for ASCII.)
        line = self._text.readline(MAX_ROW_BYTES + 1)
        if not line:
            raise StopIteration
        self.chars_read += len(line)
        if len(line) > MAX_ROW_BYTES and not line.endswith(("\n", "\r")):
            size = len(line)
            while rest := self._text.readline(SKIP_BYTES):
                size += len(rest)
                if rest.endswith(("\n", "\r")):
                    break
            raise _LineTooLong(too_large_row(_safe_text(line[:MAX_RAW_CHARS_IN_REJECT]), size))
        return line

    def put_back_record(self) -> None:
        """Forget the record being read: all its lines will be read again (its line that was too long is
        gone already)."""
        self.replay.extendleft(reversed(self.taken))
        self.taken = []

    def give_up_record(self) -> str:
        """Forget the current record but its first line (returned); its other lines will be read again."""
        first, rest = (self.taken[0] if self.taken else ""), self.taken[1:]
        self.replay.extendleft(reversed(rest))
        self.taken = []
        return first


def read_csv(source: SourceFile, infer_types: bool = True) -> Iterator[RowChunk]:
    delimiter = _delimiter(source.uri)
    with open_binary(source.uri) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        lines = _Lines(text)
        # strict: an unclosed quote at the end of the file is an error, not a silently swallowed tail
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, _RunawayRecord, _LineTooLong) as error:
            raise ConfigError(f"{source.uri}: cannot read the CSV header ({error}). Is --format right?") from None
        if _has_bad_encoding(header) or any(_CONTROL_CHARS.search(cell) for cell in header):
            raise ConfigError(
                f"{source.uri}: the first line is not a UTF-8 CSV header. Is --format right for this file?"
            )
        header = unique_column_names(header, source.uri)
        width = len(header)
        convert = infer_scalar if infer_types else str
        chunk: RowChunk = []
        row_number = 0
        while True:
            lines.taken = []
            try:
                cells = next(reader)
            except StopIteration:
                break
            except _LineTooLong as error:
                row_number += 1
                lines.put_back_record()
                reader = csv.reader(lines, delimiter=delimiter, strict=True)
                chunk.append((row_number, error.bad_row))
                continue
            except (csv.Error, _RunawayRecord) as error:
                row_number += 1
                first = lines.give_up_record()
                reader = csv.reader(lines, delimiter=delimiter, strict=True)  # a fresh parser state
                chunk.append((row_number, BadRow(
                    "malformed_csv", f"unreadable CSV row ({error}); a quote that never closes?",
                    _safe_text(first[:MAX_RAW_CHARS_IN_REJECT]))))
                continue
            if not cells:
                continue
            row_number += 1
            if len(cells) != width and len(lines.taken) > 1:
                # A record over several lines with the wrong width: most likely a stray quote that swallowed
                # the lines below it. Reject its first line only and read the others again.
                first = lines.give_up_record()
                reader = csv.reader(lines, delimiter=delimiter, strict=True)
                chunk.append((row_number, BadRow(
                    "malformed_csv", f"a quoted field runs over {len(cells)} fields and several lines; "
                    "a quote that never closes?", _safe_text(first[:MAX_RAW_CHARS_IN_REJECT]))))
            elif len(cells) != width:
                chunk.append((row_number, BadRow(
                    "wrong_field_count", f"{len(cells)} fields, the header has {width}", _raw_line(cells))))
            elif _has_bad_encoding(cells):
                chunk.append((row_number, BadRow("bad_encoding", "not valid UTF-8", _raw_line(cells))))
            else:
                chunk.append((row_number, {
                    name: convert(cell) for name, cell in zip(header, cells, strict=True) if cell != ""
                }))
            if len(chunk) >= ROWS_PER_CHUNK or lines.chars_read >= MAX_CHUNK_BYTES:
                yield chunk
                chunk, lines.chars_read = [], 0
        if chunk:
            yield chunk


def read_csv_header(source: SourceFile) -> list[str]:
    """The column names (a repeated name's copies renamed as read_csv does), or [] when there is no header."""
    with open_binary(source.uri) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        try:
            return unique_column_names(next(csv.reader(_Lines(text), delimiter=_delimiter(source.uri))), source.uri)
        except (StopIteration, csv.Error, _RunawayRecord, _LineTooLong):
            return []


class CsvAdapter(Adapter):
    """Generic CSV: the header names the columns of the mapping."""

    name: ClassVar[str] = "csv"
    extensions: ClassVar[tuple[str, ...]] = (".csv", ".tsv")

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        return read_csv(source)

    def columns(self, source: SourceFile) -> list[str] | None:
        return read_csv_header(source)
