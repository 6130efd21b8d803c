"""Parquet files, read a row group's worth of record batches at a time (never the whole file)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
from posthog_migrate.adapters.base import (
    ROWS_PER_CHUNK,
    Adapter,
    RowChunk,
    SourceFile,
    filesystem_for,
    unique_column_names,
)
from posthog_migrate.errors import ConfigError


def open_parquet(source: SourceFile) -> pq.ParquetFile:
    filesystem, path = filesystem_for(source.uri)
    try:
        return pq.ParquetFile(filesystem.open_input_file(path))
    except (pa.ArrowInvalid, OSError) as error:
        raise ConfigError(f"{source.uri}: not a readable Parquet file ({error}). Is --format right?") from None


def readable_batch(batch: pa.RecordBatch, names: list[str]) -> pa.RecordBatch:
    """The batch with its columns named ``names`` (repeated names made unique: ``to_pylist`` would keep only
    the last column of a name) and top-level ns timestamp columns cast to µs (truncated, as events carry
    µs): without pandas, ``to_pylist`` raises on any ns value that is not a whole µs, which would stop the
    whole file."""
    columns = []
    changed = names != batch.schema.names
    for column in batch.columns:
        if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
            column = column.cast(pa.timestamp("us", tz=column.type.tz), safe=False)
            changed = True
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=names) if changed else batch


def read_parquet(source: SourceFile) -> Iterator[RowChunk]:
    parquet = open_parquet(source)
    names = unique_column_names(parquet.schema_arrow.names, source.uri)
    row_number = 0
    for batch in parquet.iter_batches(batch_size=ROWS_PER_CHUNK):
        records = readable_batch(batch, names).to_pylist()
        chunk = [(row_number + offset, record) for offset, record in enumerate(records, start=1)]
        row_number += len(records)
        yield chunk


class ParquetAdapter(Adapter):
    name: ClassVar[str] = "parquet"
    extensions: ClassVar[tuple[str, ...]] = (".parquet", ".pq")

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        return read_parquet(source)

    def columns(self, source: SourceFile) -> list[str] | None:
        return unique_column_names(open_parquet(source).schema_arrow.names, source.uri)
