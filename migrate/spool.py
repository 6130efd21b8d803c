"""Bounded-memory global sort: sorted runs spilled to disk, then a batch-wise k-way merge.

pyarrow has no out-of-core sort. So ``prepare`` fills a buffer up to a share of the memory budget,
sorts it and writes it as an LZ4-compressed Arrow IPC "run"; ``send`` merges the runs. The merge is
batch-wise, not row-wise (row-wise ``heapq.merge`` measured ~25x slower): from every run's current
window of record batches it takes all rows up to the smallest "last key" among those windows, sorts that
slice, and emits it. Memory is one window per run plus one merged slice (see merge_window_bytes). Only the
fixed-width key columns are sorted; the payloads stay in the windows they were read into until the batch
cutter gathers them, once, into request order (see :class:`MergedSlice`).

The sort key is ``(ts, tiebreak)``: the timestamp in microseconds, then the event's place in the input
(file index, row number, sub-event), so equal timestamps keep input order and every key is unique.
A merge can start from a :class:`MergeCursor` (rows already taken from each run), which is how ``send``
resumes without re-reading or re-sorting anything.

Every run is recorded as a :class:`RunFile`: its name, rows, size and checksum, taken right after it is
written, so that a later phase (or another process, days later) can tell a damaged run from a good one
before sending anything from it (see ``posthog_migrate.integrity``).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import accumulate, islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from posthog_migrate.errors import DamagedJob

try:  # isal's CRC-32 is the same function as zlib's, ~3.5x faster (8 GB/s here); an optional dependency
    from isal.isal_zlib import crc32
except ImportError:
    from zlib import crc32

# Layout of the tie-breaker: file index (19 bits) | row number (36 bits) | sub-event (8 bits).
TIEBREAK_ROW_BITS = 36
TIEBREAK_SUB_BITS = 8
MAX_FILES = 1 << 19
MAX_ROWS_PER_FILE = 1 << TIEBREAK_ROW_BITS
MAX_EVENTS_PER_ROW = 1 << TIEBREAK_SUB_BITS
# Record batches inside a run file: about this many bytes each: what the merge holds per run.
RUN_RECORD_BATCH_BYTES = 256 * 1024
# The final merge reads at most this many runs at once (more are compacted first), so its memory stays
# bounded whatever the export's size (see merge_window_bytes).
MAX_MERGE_FAN_IN = 64
# Each step of the merge costs a few numpy calls per run and yields about one run's window of rows, so a
# window of fixed size makes every event cost more as the runs grow in number (measured: 0.63 µs an event at
# 11 runs, 1.00 at 41, with one record batch a window). A window of this many bytes per run merged keeps that
# cost about flat; memory is then runs² x this, capped (larger windows measured slower: fresh memory).
MERGE_WINDOW_BYTES_PER_RUN = 32 * 1024
MAX_MERGE_WINDOWS_BYTES = 48 << 20
# Per buffered event, the key columns and the payload's offset: 8 + 8 + 8 + 1 + 4 bytes.
BUFFERED_EVENT_OVERHEAD_BYTES = 29
# Payload offsets are 32-bit in Arrow's binary type, so one run holds at most 2 GiB; stay well below.
MAX_RUN_BYTES = 1 << 30

SPOOL_SCHEMA = pa.schema([
    ("ts", pa.int64()),          # event time, microseconds since the epoch, UTC
    ("tiebreak", pa.int64()),    # input position: see make_tiebreak
    ("person", pa.uint64()),     # hash of distinct_id: picks the send lane and the shard
    ("kind", pa.uint8()),        # 0 = the event of a source row; 1 = an event the adapter added
    ("payload", pa.binary()),    # the event's final JSON bytes
])
EVENT_FROM_ROW = 0
EVENT_ADDED = 1


def make_tiebreak(file_index: int, row_number: int, sub_event: int = 0) -> int:
    return (file_index << (TIEBREAK_ROW_BITS + TIEBREAK_SUB_BITS)) | (row_number << TIEBREAK_SUB_BITS) | sub_event


def split_tiebreak(tiebreak: int) -> tuple[int, int, int]:
    """(file index, row number, sub-event) of a tie-breaker: where an event came from."""
    sub = tiebreak & (MAX_EVENTS_PER_ROW - 1)
    row = (tiebreak >> TIEBREAK_SUB_BITS) & (MAX_ROWS_PER_FILE - 1)
    return tiebreak >> (TIEBREAK_ROW_BITS + TIEBREAK_SUB_BITS), row, sub


CHECKSUM_READ_BYTES = 1 << 20


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _release_unused_memory() -> None:
    """Hand the memory Arrow freed back to the system. Arrow's allocator (mimalloc in the wheels) keeps freed
    pages for reuse: after a spill's sort, gathers and compression, ~13 MB a worker that the next file's mapping,
    plain Python, never uses (measured on 100,000 events of 720 bytes)."""
    pa.default_memory_pool().release_unused()


def arrow_view(values: array | np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """An Arrow array over a contiguous fixed-width column's memory, without a copy. Not ``pa.array``: its first
    call imports pandas when pandas is installed (to recognise pandas' types), ~45 MB more in every process."""
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


# The numpy type of each Arrow integer type the spool and the identity runs use.
_NUMPY_INTEGERS = {pa.int64(): np.int64, pa.uint64(): np.uint64, pa.int32(): np.int32, pa.uint8(): np.uint8}


def arrow_column(values: Sequence, arrow_type: pa.DataType) -> pa.Array:
    """``pa.array(values, arrow_type)`` for Python integers, str or bytes (None for a null), built from buffers
    for the reason arrow_view gives."""
    missing = np.fromiter((value is None for value in values), dtype=bool, count=len(values))
    validity = pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing.any() else None
    if arrow_type in _NUMPY_INTEGERS:
        numbers = np.fromiter((0 if value is None else value for value in values), dtype=_NUMPY_INTEGERS[arrow_type],
                              count=len(values))
        return pa.Array.from_buffers(arrow_type, len(values), [validity, pa.py_buffer(numbers)])
    encoded = [b"" if value is None else value.encode() if type(value) is str else value for value in values]
    offsets = np.fromiter(accumulate(map(len, encoded), initial=0), dtype=np.int32, count=len(values) + 1)
    return pa.Array.from_buffers(arrow_type, len(values), [validity, pa.py_buffer(offsets),
                                                            pa.py_buffer(b"".join(encoded))])


def numpy_view(column: pa.Array, dtype: type[np.generic]) -> np.ndarray:
    """A fixed-width Arrow column without nulls as a (read-only) numpy array, without a copy. Not ``to_numpy``:
    like ``pa.array``, its first call imports pandas when pandas is installed."""
    return np.frombuffer(column.buffers()[1], dtype=dtype, count=len(column),
                         offset=column.offset * np.dtype(dtype).itemsize)


def _payload_sizes(payloads: pa.Array) -> np.ndarray:
    """Each payload's length in bytes (int32), from the binary column's offsets."""
    offsets = np.frombuffer(payloads.buffers()[1], dtype=np.int32, count=len(payloads) + 1, offset=payloads.offset * 4)
    return np.diff(offsets)


def file_checksum(path: Path) -> str:
    """The CRC-32 of a file's bytes, as ``crc32:xxxxxxxx``: recorded when a run is written, compared before
    it is read. LZ4 in Arrow IPC carries no checksum of its own, so a flipped bit in a payload would
    otherwise be sent as it is; CRC-32 catches every burst error up to 32 bits, at ~5 GB/s from the page
    cache (a 36 MB run: 7 ms, against ~300 ms to sort and write it)."""
    value = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHECKSUM_READ_BYTES):
            value = crc32(chunk, value)
    return f"crc32:{value:08x}"


@dataclass(frozen=True)
class RunFile:
    """A run as the manifest records it: which file, how many rows, and its size and checksum when written.

    ``bytes`` and ``checksum`` are None in a job prepared by a version that did not record them.
    """

    file: str
    rows: int
    bytes: int | None = None
    checksum: str | None = None

    @classmethod
    def written(cls, path: Path, rows: int) -> RunFile:
        """The record of a run just written (and fsync'd) at ``path``."""
        return cls(path.name, rows, path.stat().st_size, file_checksum(path))

    @classmethod
    def from_dict(cls, data: dict) -> RunFile:
        return cls(data["file"], data["rows"], data.get("bytes"), data.get("checksum"))

    def to_dict(self) -> dict:
        return asdict(self)


class RunWriter:
    """Buffers events and spills them as sorted runs of at most ``run_bytes`` (the memory share).

    The buffer is columnar from the start: fixed-width ``array`` columns and one growing ``bytearray``
    of payloads with an offsets column, i.e. exactly Arrow's layout. That costs ~25 bytes per event
    beyond the payload (a list of Python ``bytes`` objects cost ~160, and orjson's results carry
    spare capacity), keeps the budget honest, and hands the buffers to Arrow without copying.
    """

    def __init__(self, directory: Path, run_bytes: int, prefix: str = "run-"):
        self.directory = directory
        self.run_bytes = min(run_bytes, MAX_RUN_BYTES)
        self.prefix = prefix
        self.runs: list[RunFile] = []
        self._reset()

    @property
    def run_paths(self) -> list[Path]:
        return [self.directory / run.file for run in self.runs]

    def _reset(self) -> None:
        self._ts = array("q")
        self._tiebreak = array("q")
        self._person = array("Q")
        self._kind = array("B")
        self._offsets = array("i", [0])
        self._data = bytearray()

    @property
    def buffered_bytes(self) -> int:
        return len(self._data) + len(self._ts) * BUFFERED_EVENT_OVERHEAD_BYTES

    def add(self, ts: int, tiebreak: int, person: int, kind: int, payload: bytes) -> None:
        self._ts.append(ts)
        self._tiebreak.append(tiebreak)
        self._person.append(person)
        self._kind.append(kind)
        self._data += payload
        self._offsets.append(len(self._data))

    def add_many(self, ts: array, tiebreaks: array, people: array, kinds: array, payloads: list[bytes]) -> None:
        """:meth:`add` for a chunk of events at once (the same columns, in the same order): a few C loops
        instead of six appends per event."""
        self._ts.extend(ts)
        self._tiebreak.extend(tiebreaks)
        self._person.extend(people)
        self._kind.extend(kinds)
        # Each payload's end: accumulate starts with the end the offsets hold already, skipped.
        self._offsets.extend(islice(accumulate(map(len, payloads), initial=len(self._data)), 1, None))
        self._data += b"".join(payloads)

    @property
    def full(self) -> bool:
        """The buffer reached its share of the memory budget: the caller spills at its next clean point."""
        return self.buffered_bytes >= self.run_bytes

    def adopt(self, runs: list[RunFile]) -> None:
        """Continue after runs written by an earlier, interrupted process."""
        self.runs = list(runs)

    def spill(self) -> None:
        """Sort the buffer and write it as one run file (fsync'd: a later phase trusts it)."""
        rows = len(self._ts)
        if not rows:
            return
        payload = pa.Array.from_buffers(
            pa.binary(), rows, [None, pa.py_buffer(self._offsets), pa.py_buffer(self._data)]
        )
        table = pa.record_batch([arrow_view(self._ts, pa.int64()), arrow_view(self._tiebreak, pa.int64()),
                                 arrow_view(self._person, pa.uint64()), arrow_view(self._kind, pa.uint8()), payload],
                                schema=SPOOL_SCHEMA)
        order = pc.sort_indices(table, [("ts", "ascending"), ("tiebreak", "ascending")])
        average_row = max(1, table.nbytes // max(1, rows))
        rows_per_batch = max(256, RUN_RECORD_BATCH_BYTES // average_row)
        path = self.directory / f"{self.prefix}{len(self.runs):04d}.arrow"
        options = pa.ipc.IpcWriteOptions(compression="lz4")
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SPOOL_SCHEMA, options=options) as writer:
            # One record batch gathered into sorted order at a time: a sorted copy of the whole buffer would
            # double the buffer's memory at every spill (the peak of prepare's workers).
            for start in range(0, rows, rows_per_batch):
                writer.write_batch(table.take(order.slice(start, rows_per_batch)))
        _fsync_file(path)
        del table, payload  # they hold the buffer's bytes: released by _reset
        self._reset()
        _release_unused_memory()
        self.runs.append(RunFile.written(path, rows))

    def close(self) -> list[Path]:
        self.spill()
        return self.run_paths


@dataclass(frozen=True)
class MergeCursor:
    """A position in the merged stream: how many rows were taken from each run, and in total."""

    taken: tuple[int, ...]

    @property
    def position(self) -> int:
        return sum(self.taken)

    @classmethod
    def start(cls, runs: int) -> MergeCursor:
        return cls((0,) * runs)

    def advanced(self, run_ids: np.ndarray) -> MergeCursor:
        """The cursor after also taking the rows whose run ids are given."""
        counts = np.bincount(run_ids, minlength=len(self.taken))
        return MergeCursor(tuple(int(a + b) for a, b in zip(self.taken, counts, strict=True)))


_READ_OPTIONS = pa.ipc.IpcReadOptions(use_threads=False)
# The numpy types of SPOOL_SCHEMA's key columns: ts, tiebreak, person, kind.
_KEY_DTYPES = (np.int64, np.int64, np.uint64, np.uint8)


def merge_window_bytes(runs: int) -> int:
    """How much of each run the merge holds at a time (at least one record batch): see MERGE_WINDOW_BYTES_PER_RUN.
    Up to 39 runs this grows with the runs; beyond, they share MAX_MERGE_WINDOWS_BYTES."""
    return max(RUN_RECORD_BATCH_BYTES, min(runs * MERGE_WINDOW_BYTES_PER_RUN, MAX_MERGE_WINDOWS_BYTES // max(1, runs)))


class _RunReader:
    """Reads one run in order, a window of record batches at a time, starting after ``skip`` rows.

    The merge looks at the current window through numpy views of its columns and a read ``position``
    instead of slicing the window at every step: a step then costs a couple of ``searchsorted`` per run.
    """

    def __init__(self, path: Path, skip: int, window_bytes: int = RUN_RECORD_BATCH_BYTES):
        self.path = path
        self.window_bytes = window_bytes
        # Single-threaded decoding: handing each ~256 KiB batch's LZ4 blocks to Arrow's thread pool cost
        # about three times the CPU of decompressing them here (and was slower, too).
        try:
            self._reader = pa.ipc.open_file(pa.OSFile(str(path), "rb"), options=_READ_OPTIONS)
        except (pa.ArrowException, OSError) as error:
            raise self._damaged(error) from None
        self._next_batch = 0
        self._skip = skip
        self.current: pa.RecordBatch | None = None
        self.position = 0
        self.load_next()

    def load_next(self) -> None:
        """Read the next window: record batches up to ``window_bytes`` (None at the end of the run)."""
        self.current = None
        batches, size = [], 0
        while self._next_batch < self._reader.num_record_batches and size < self.window_bytes:
            try:
                batch = self._reader.get_batch(self._next_batch)
            except (pa.ArrowException, OSError) as error:
                raise self._damaged(error) from None
            self._next_batch += 1
            if not batches and self._skip >= batch.num_rows:  # resuming: rows taken before
                self._skip -= batch.num_rows
                continue
            batches.append(batch)
            size += batch.nbytes
        if not batches:
            return
        self.current = batches[0]
        self.position, self._skip = self._skip, 0
        # The key columns laid end to end (zero-copy views for one batch: the spool has no nulls). The payloads
        # stay in their batches (the batch cutter copies them once, into request order): see payload_pieces.
        self.ts, self.tiebreak, self.person, self.kind = (
            _joined([numpy_view(batch.column(index), dtype) for batch in batches])
            for index, dtype in enumerate(_KEY_DTYPES))
        self._payloads = [batch.column(4) for batch in batches]
        self._starts = np.cumsum([0, *(batch.num_rows for batch in batches)])
        self.sizes = _joined([_payload_sizes(payload) for payload in self._payloads])

    def payload_pieces(self, start: int, stop: int) -> list[pa.Array]:
        """The payloads of window rows ``start:stop``: zero-copy slices of the batches they are in."""
        pieces = []
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        for index in range(first, len(self._payloads)):
            begin, end = int(self._starts[index]), int(self._starts[index + 1])
            if begin >= stop:
                break
            low, high = max(start, begin) - begin, min(stop, end) - begin
            pieces.append(self._payloads[index].slice(low, high - low))
        return pieces

    def _damaged(self, error: Exception) -> DamagedJob:
        """A run that Arrow cannot read. Runs are checked before a merge starts (``posthog_migrate.integrity``):
        this is the defence behind that check, for a file damaged while it is being merged."""
        return DamagedJob(self.path.parent.parent, [f"{self.path.name} cannot be read ({error})"])

    def last_key(self) -> tuple[int, int]:
        return int(self.ts[-1]), int(self.tiebreak[-1])

    def rows_up_to(self, bound_ts: int, bound_tiebreak: int) -> int:
        """The position just past the last row whose key is <= the bound (at least the current position)."""
        ts = self.ts
        high = int(ts.searchsorted(bound_ts, side="right"))
        if high and ts[high - 1] == bound_ts:  # rows with the bound's timestamp: their tiebreaks decide
            low = int(ts.searchsorted(bound_ts, side="left"))
            high = low + int(self.tiebreak[low:high].searchsorted(bound_tiebreak, side="right"))
        return max(high, self.position)


@dataclass
class MergedSlice:
    """A stretch of the merged stream: the key columns in (ts, tiebreak) order, payloads left where read.

    ``pieces`` are zero-copy slices of the runs' payload columns; merged row ``i`` is row ``order[i]``
    of those pieces laid end to end. Sorting moves only the small fixed-width columns, and whoever needs
    the payloads in a new order (the batch cutter) gathers them once, straight into request order.
    """

    ts: np.ndarray
    tiebreak: np.ndarray
    person: np.ndarray
    kind: np.ndarray
    run: np.ndarray      # which run each row came from (int32): see MergeCursor.advanced
    sizes: np.ndarray    # payload lengths in bytes
    order: np.ndarray    # int64 index into the pieces laid end to end
    pieces: list[pa.Array]

    @property
    def num_rows(self) -> int:
        return len(self.order)

    def slice(self, start: int, stop: int | None = None) -> MergedSlice:
        """Rows ``start:stop`` (views; the payload pieces are shared)."""
        part = slice(start, stop)
        return MergedSlice(self.ts[part], self.tiebreak[part], self.person[part], self.kind[part],
                           self.run[part], self.sizes[part], self.order[part], self.pieces)

    def payloads(self) -> pa.Array:
        """The payloads in merged order (a copy)."""
        return pa.concat_arrays(self.pieces).take(arrow_view(np.ascontiguousarray(self.order), pa.int64()))

    def to_table(self) -> pa.Table:
        """The slice as a table of SPOOL_SCHEMA plus the ``run`` column."""
        return pa.table(
            [arrow_view(np.ascontiguousarray(self.ts), pa.int64()),
             arrow_view(np.ascontiguousarray(self.tiebreak), pa.int64()),
             arrow_view(np.ascontiguousarray(self.person), pa.uint64()),
             arrow_view(np.ascontiguousarray(self.kind), pa.uint8()), self.payloads(),
             arrow_view(np.ascontiguousarray(self.run), pa.int32())],
            schema=SPOOL_SCHEMA.append(pa.field("run", pa.int32())),
        )


def merge_slices(run_paths: list[Path], cursor: MergeCursor | None = None) -> Iterator[MergedSlice]:
    """Yield all runs' events in (ts, tiebreak) order, as :class:`MergedSlice` s.

    Starting from ``cursor`` skips the rows it says were taken. The ``run`` column tells which run each
    row came from, so a consumer can compute the cursor at any row (``MergeCursor.advanced``).
    """
    cursor = cursor or MergeCursor.start(len(run_paths))
    window_bytes = merge_window_bytes(len(run_paths))
    readers = [_RunReader(path, skip, window_bytes) for path, skip in zip(run_paths, cursor.taken, strict=True)]
    active = [(index, reader) for index, reader in enumerate(readers) if reader.current is not None]
    while active:
        bound_ts, bound_tiebreak = min(reader.last_key() for _, reader in active)
        parts: list[tuple[int, _RunReader, int, int]] = []
        for index, reader in active:
            start, stop = reader.position, reader.rows_up_to(bound_ts, bound_tiebreak)
            if stop > start:
                parts.append((index, reader, start, stop))
        # Slice every column of every part before advancing a reader (that replaces its arrays).
        pieces = [piece for _, reader, start, stop in parts for piece in reader.payload_pieces(start, stop)]
        if len(parts) == 1:
            index, reader, start, stop = parts[0]
            merged = MergedSlice(reader.ts[start:stop], reader.tiebreak[start:stop], reader.person[start:stop],
                                 reader.kind[start:stop], np.full(stop - start, index, dtype=np.int32),
                                 reader.sizes[start:stop], np.arange(stop - start, dtype=np.int64), pieces)
        else:
            columns = [np.concatenate([getattr(reader, name)[start:stop] for _, reader, start, stop in parts])
                       for name in ("ts", "tiebreak", "person", "kind", "sizes")]
            run = np.repeat(np.array([index for index, *_ in parts], dtype=np.int32),
                            [stop - start for _, _, start, stop in parts])
            # Each part is sorted and every key is unique: a lexsort of these few hundred rows is the merge.
            order = np.lexsort((columns[1], columns[0]))
            ts, tiebreak, person, kind, sizes = (column[order] for column in columns)
            merged = MergedSlice(ts, tiebreak, person, kind, run[order], sizes, order, pieces)
        for _, reader, _, stop in parts:
            if stop == len(reader.ts):
                reader.load_next()
            else:
                reader.position = stop
        active = [(index, reader) for index, reader in active if reader.current is not None]
        yield merged


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def merge_runs(run_paths: list[Path], cursor: MergeCursor | None = None) -> Iterator[pa.Table]:
    """:func:`merge_slices` as tables (SPOOL_SCHEMA plus an int32 ``run`` column), payloads in order."""
    for merged in merge_slices(run_paths, cursor):
        yield merged.to_table()


def _merge_groups(runs: list[RunFile], fan_in: int) -> list[list[RunFile]]:
    """The runs of one level of the compaction, in groups of ``fan_in``: each group becomes one run."""
    return [runs[start:start + fan_in] for start in range(0, len(runs), fan_in)]


def rows_to_compact(runs: list[RunFile], fan_in: int = MAX_MERGE_FAN_IN) -> int:
    """How many rows :func:`compact_runs` will write, over all its levels (its progress bar's total)."""
    total = 0
    rows = [run.rows for run in runs]
    while len(rows) > fan_in:
        groups = [rows[start:start + fan_in] for start in range(0, len(rows), fan_in)]
        total += sum(sum(group) for group in groups if len(group) > 1)
        rows = [sum(group) for group in groups]
    return total


def compact_runs(directory: Path, runs: list[RunFile], fan_in: int = MAX_MERGE_FAN_IN,
                 on_rows: Callable[[int], None] | None = None) -> list[RunFile]:
    """Merge runs in groups of ``fan_in`` until at most ``fan_in`` remain (a multi-level external sort).

    The final merge holds one record batch per run, so its memory grows with the number of runs, and
    prepare writes at least one run per input file: a year of hourly Amplitude files would be 8,760
    runs. Compacting first keeps the merge's memory bounded whatever the number of files. The merged
    runs get fresh names and the inputs are left in place: the caller deletes them once the manifest
    that no longer names them is saved, so a crash here just redoes the compaction. ``on_rows(n)`` is told
    of every n rows written.
    """
    level = 0
    while len(runs) > fan_in:
        compacted = []
        for number, group in enumerate(_merge_groups(runs, fan_in)):
            if len(group) == 1:
                compacted.append(group[0])
                continue
            path = directory / f"merged-{level}-{number:05d}.arrow"
            rows = _write_merged(path, [directory / run.file for run in group], on_rows)
            compacted.append(RunFile.written(path, rows))
        runs = compacted
        level += 1
    return runs


def _write_merged(path: Path, run_paths: list[Path], on_rows: Callable[[int], None] | None) -> int:
    rows = 0
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SPOOL_SCHEMA, options=options) as writer:
        for chunk in merge_runs(run_paths):
            table = chunk.drop_columns(["run"])
            average_row = max(1, table.nbytes // max(1, table.num_rows))
            writer.write_table(table, max_chunksize=max(256, RUN_RECORD_BATCH_BYTES // average_row))
            rows += table.num_rows
            if on_rows is not None:
                on_rows(table.num_rows)
    _fsync_file(path)
    return rows
