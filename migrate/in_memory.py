"""In-memory inputs of the Python API (a pandas DataFrame, a pyarrow Table, RecordBatch or RecordBatchReader,
any object with the Arrow stream interface such as a polars DataFrame, or an iterable of dicts), copied once
to the job's work directory as files.

Everything after the listing reads files: fingerprints, worker processes, resume, the rejects file (which
names a file and a row). So each in-memory input is written to ``WORKDIR/inputs/<content hash>.parquet`` (or
``.jsonl``) before the job is opened, and that copy is the input. The name is a hash of the content and a
copy is never written again, so the same data given again is the same input (a resume finds its
fingerprint unchanged), while other data is a new input, which a prepared job refuses as it refuses a
changed file. A resumed run needs no data at all: ``pm.run(None, job=...)`` reads the copies it recorded.

Tables are kept as Parquet (their types kept: timestamps, decimals), which the parquet, segment, ga4 and
heap formats read. The amplitude, mixpanel, posthog and jsonl formats (and plugins' formats) read JSON
lines, so tables for them are kept as JSON lines, as records (dicts) always are. The csv format reads CSV
files only, and is refused. Rows are numbered from 1 in the data's order, in the rejects file as in files.
pandas is never imported here: a DataFrame is recognised only when its caller has imported pandas.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson
from posthog_migrate.checkpoint import fsync_directory
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import json_default
from posthog_migrate.render import Progress

# Formats whose readers take Parquet: a table for one of them is kept as Parquet, for any other as JSON lines.
PARQUET_FORMATS = frozenset({"parquet", "segment", "ga4", "heap"})
RECORDS_PER_CHUNK = 10_000
# The content hash in a copy's name: 128 bits of SHA-256.
HASH_CHARACTERS = 32
ACCEPTED = ("a path (str or pathlib.Path), a pandas DataFrame, a pyarrow Table, RecordBatch or RecordBatchReader, "
            "an object with the Arrow stream interface (e.g. a polars DataFrame), an iterable of dicts (one per "
            "row), or a list of these")


def describe(data: Any) -> str:
    """What an in-memory input is, in words: "a pandas DataFrame", "records (dicts)"."""
    return _table_kind(data) or "records (dicts)"


def _table_kind(data: Any) -> str | None:
    pandas = sys.modules.get("pandas")  # a DataFrame's owner has imported pandas: never imported here
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return "a pandas DataFrame"
    import pyarrow as pa

    for kind, name in ((pa.Table, "a pyarrow Table"), (pa.RecordBatch, "a pyarrow RecordBatch"),
                       (pa.RecordBatchReader, "a pyarrow RecordBatchReader")):
        if isinstance(data, kind):
            return name
    if hasattr(data, "__arrow_c_stream__"):
        return f"an Arrow stream ({type(data).__module__}.{type(data).__name__})"
    return None


def _is_path(item: Any) -> bool:
    return isinstance(item, str | os.PathLike)


def _not_an_input(item: Any) -> ConfigError:
    return ConfigError(f"a {type(item).__module__}.{type(item).__name__} is not an input: give {ACCEPTED}")


def split_inputs(source_or_sources: Any) -> tuple[list[str], list[Any]]:
    """The inputs, as the paths among them and the in-memory ones (records are one in-memory input)."""
    given = source_or_sources
    if given is None:
        return [], []
    if isinstance(given, Mapping):
        raise ConfigError("a dict is one row: give a list (or any iterable) of dicts, one per row")
    if _is_path(given) or _table_kind(given) is not None:
        items = [given]
    elif isinstance(given, list | tuple):
        if not given:
            raise ConfigError(f"the list of inputs is empty: give {ACCEPTED}")
        if all(isinstance(item, Mapping) for item in given):
            return [], [given]
        items = list(given)
    elif isinstance(given, Iterable) and not isinstance(given, bytes | bytearray):
        return [], [given]  # records as they come (a generator): each is checked as it is written
    else:
        raise _not_an_input(given)
    paths, in_memory = [], []
    for item in items:
        if _is_path(item):
            paths.append(os.fspath(item))
        elif _table_kind(item) is not None:
            in_memory.append(item)
        else:
            raise _not_an_input(item)
    return paths, in_memory


def spool(data: Any, folder: Path, format_name: str, progress: Progress) -> Path:
    """Write ``data`` to ``folder`` once, named by its content; the file's path (see the module's docstring)."""
    if format_name == "csv":
        raise ConfigError("format='csv' reads CSV files only; in-memory data is kept as Parquet or JSON lines: "
                          "leave format='auto', or name the format of its rows (e.g. 'jsonl', 'amplitude')")
    bar = progress.bar(None, "rows", f"copying {describe(data)} to {folder}")
    try:
        if _table_kind(data) is None:
            if format_name == "parquet":
                raise ConfigError("format='parquet' reads Parquet files; records (dicts) are kept as JSON lines: "
                                  "leave format='auto', or give format='jsonl'")
            return _write_once(folder, ".jsonl", lambda out: _write_records(data, out, bar.update))
        schema, batches = _arrow_batches(data)
        first = next(batches, None)
        batches = itertools.chain([first] if first is not None else [], batches)
        if _kept_as_parquet(format_name, first):
            return _write_once(folder, ".parquet", lambda out: _write_parquet(schema, batches, out, bar.update))
        return _write_once(folder, ".jsonl", lambda out: _write_table_rows(schema, batches, out, bar.update))
    finally:
        bar.close()


def _kept_as_parquet(format_name: str, first: Any) -> bool:
    """Whether a table for ``format_name`` is kept as Parquet; with "auto", the format its first rows look like
    decides (Parquet when they look like no platform's export)."""
    if format_name != "auto":
        return format_name in PARQUET_FORMATS
    from posthog_migrate.adapters import SAMPLE_RECORDS, recognise_format
    from posthog_migrate.adapters.parquet import readable_batch

    if first is None:
        return True
    sample = first.slice(0, SAMPLE_RECORDS)
    recognised = recognise_format(readable_batch(sample, sample.schema.names).to_pylist())
    return recognised is None or recognised in PARQUET_FORMATS


def _arrow_batches(data: Any) -> tuple[Any, Iterator[Any]]:
    """The data's Arrow schema and record batches, without schema metadata (pandas' holds its version, which
    would change the content hash with an upgrade). A DataFrame's named index levels become columns."""
    import pyarrow as pa

    kind = _table_kind(data)
    try:
        if kind == "a pandas DataFrame":
            named_index = any(name is not None for name in data.index.names)
            table = pa.Table.from_pandas(data, preserve_index=named_index)
        elif isinstance(data, pa.Table):
            table = data
        elif isinstance(data, pa.RecordBatch):
            table = pa.Table.from_batches([data])
        else:
            reader = data if isinstance(data, pa.RecordBatchReader) else pa.RecordBatchReader.from_stream(data)
            return reader.schema.remove_metadata(), (batch.replace_schema_metadata(None) for batch in reader)
    except (pa.ArrowException, ValueError, TypeError) as error:
        raise ConfigError(f"{kind} cannot be read as an Arrow table: {error}. A column of mixed types is the usual "
                          "cause: convert it, e.g. df[column] = df[column].astype(str)") from None
    table = table.replace_schema_metadata(None)
    return table.schema, iter(table.to_batches())


def _write_once(folder: Path, suffix: str, write: Callable[[Path], str]) -> Path:
    """Write a copy with ``write`` (which returns its content hash) to a temporary file, then name it by the
    hash, atomically. A copy of that name already there is kept as it is: never rewritten, its fingerprint
    (mtime included) holds."""
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".copy-{secrets.token_hex(8)}.tmp"  # hidden, as a folder's listing passes over it
    temporary.touch(exist_ok=False)  # (not mkstemp: its file is private whatever the umask says)
    try:
        content_hash = write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        final = folder / f"{content_hash[:HASH_CHARACTERS]}{suffix}"
        if final.exists():
            temporary.unlink()
        else:
            os.replace(temporary, final)
            fsync_directory(folder)
        return final
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_parquet(schema: Any, batches: Iterator[Any], path: Path, counted: Callable[[int], Any]) -> str:
    """Parquet, hashed by the Arrow data it holds (its IPC form: the same whatever version writes the file)."""
    import pyarrow.parquet as pq

    content = hashlib.sha256(schema.serialize())
    with pq.ParquetWriter(str(path), schema) as writer:
        for batch in batches:
            content.update(batch.serialize())
            writer.write_batch(batch)
            counted(batch.num_rows)
    return content.hexdigest()


def _json_line(record: Any, number: int) -> bytes:
    try:
        return orjson.dumps(record, default=json_default,
                            option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    except orjson.JSONEncodeError as error:
        raise ConfigError(f"row {number:,} of the data: {error}; give values JSON can hold (text, numbers, true/false, "
                          "None, lists, dicts), datetimes or decimals") from None


def _write_records(records: Iterable[Any], path: Path, counted: Callable[[int], Any]) -> str:
    with open(path, "wb") as out:
        return _write_lines(records, out, counted)


def _write_lines(records: Iterable[Any], out: IO[bytes], counted: Callable[[int], Any]) -> str:
    content = hashlib.sha256()
    lines: list[bytes] = []

    def flush() -> None:
        data = b"".join(lines)
        content.update(data)
        out.write(data)
        counted(len(lines))
        lines.clear()

    for number, record in enumerate(records, start=1):
        if not isinstance(record, Mapping):
            raise ConfigError(f"row {number:,} of the data is a {type(record).__name__}, not a dict: give dicts, "
                              "one per row")
        lines.append(_json_line(record if isinstance(record, dict) else dict(record), number))
        if len(lines) >= RECORDS_PER_CHUNK:
            flush()
    flush()
    return content.hexdigest()


def _write_table_rows(schema: Any, batches: Iterator[Any], path: Path, counted: Callable[[int], Any]) -> str:
    """A table as JSON lines, a row an object (for the formats whose readers take no Parquet)."""
    from posthog_migrate.adapters.base import unique_column_names
    from posthog_migrate.adapters.parquet import readable_batch

    names = unique_column_names(schema.names, "the data")
    rows = (row for batch in batches for row in readable_batch(batch, names).to_pylist())
    return _write_records(rows, path, counted)


def recorded_inputs(root: Path) -> tuple[str, ...]:
    """The inputs a job recorded (its manifest's, else those its unfinished prepare began with): what a
    resume without the data reads. An archive's members are named by the archive, as they were given."""
    from posthog_migrate.adapters.base import split_member
    from posthog_migrate.checkpoint import read_json

    manifest = read_json(root / "manifest.json")
    if manifest is not None:
        uris = manifest["sources"]
    else:
        partial = read_json(root / "prepare.json")
        uris = [entry["uri"] for entry in partial["fingerprint"]["inputs"]] if partial else []
    if not uris:
        raise ConfigError(f"the job {root} has recorded no inputs (it never got as far as reading them): give "
                          "the data again as the first argument")
    return tuple(dict.fromkeys(split_member(uri)[0] for uri in uris))
