"""A migration job: its inputs, adapter, mapping, work directory and fingerprint.

Everything here happens before any work: finding the inputs, choosing the adapter, checking the mapping
against the files, and locking the work directory so that one process at a time runs a job.
"""

from __future__ import annotations

import fcntl
import filecmp
import functools
import hashlib
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, NamedTuple

import orjson
from posthog_migrate.adapters import adapter_class, detect_format, first_records, recognise_format
from posthog_migrate.adapters.base import Adapter, BadRow, SourceFile, split_member
from posthog_migrate.adapters.rejects import RejectsAdapter, is_retriable
from posthog_migrate.checkpoint import digest, read_json
from posthog_migrate.config import Settings
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import Rejection, utc_now_us, validate
from posthog_migrate.mapping import MAPPING_ARGUMENT, ColumnMapping, Filtered
from posthog_migrate.pull.sources import Pulled, is_api_uri
from posthog_migrate.render import Progress
from posthog_migrate.sources import (
    InputListing,
    SkippedInput,
    describe_changes,
    expand_sources,
    fingerprint,
    fingerprint_path,
    joined_listings,
    list_inputs,
)
from posthog_migrate.transform import EventFinisher

# Listing thousands of files can take a while: a bar shows it, but only when it lasts longer than this.
LISTING_PROGRESS_DELAY_SECONDS = 1.0


@functools.lru_cache(maxsize=1 << 16)  # a person has many events, often close together: most calls repeat
def person_hash(distinct_id: str) -> int:
    """A stable 64-bit hash of a distinct_id: picks the send lane (and the shard) of a person."""
    return int.from_bytes(hashlib.blake2b(distinct_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little")


class FormatChoice(NamedTuple):
    """The format a job's inputs are read in, and why."""

    name: str
    reason: str  # for the user: "as --format says", "from the file ending", "recognised by their rows, ..."
    recognised: bool = False  # by the rows (--format auto), not by the files' endings or --format


@dataclass
class Job:
    """A migration job: its settings, inputs, adapter and work directory."""

    settings: Settings
    root: Path
    sources: list[SourceFile]
    adapter: Adapter
    format_name: str
    mapping: ColumnMapping
    job_id: str = ""
    import_source: str = ""  # what $import_source says: the format the rows came in (csv, amplitude, ...)
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Progress = field(default_factory=Progress)  # where the phases show how far they got (none: silent)
    # Inputs of a prepared job that are no longer there, with the fingerprints prepare recorded: the job
    # sends from its work directory, so a moved or deleted input is no change (see open_job).
    gone_inputs: dict[str, dict] = field(default_factory=dict)
    # Why the inputs are read in this format, for the user: "as --format says", "from the file ending", or what
    # the rows look like when --format auto recognised them (format_recognised).
    format_reason: str = ""
    format_recognised: bool = False
    # What the fingerprint records of the amplitude:// and mixpanel:// sources: each URI (without endpoint or
    # credentials) and its chunks (see posthog_migrate.pull.stage).
    pulls: list[dict] = field(default_factory=list)

    @property
    def format_note(self) -> str | None:
        """What inspect and the summary say when --format auto chose the format by the rows (a count of files)."""
        if not self.format_recognised:
            return None
        return f"files read as {self.format_name}, {self.format_reason}; give --format to read them otherwise"
    skipped: list[SkippedInput] = field(default_factory=list)  # what the arguments hold that is not read

    def __post_init__(self) -> None:
        self.finisher = EventFinisher(self.mapping, self.import_source or self.format_name, self.job_id)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def prepare_progress_path(self) -> Path:
        return self.root / "prepare.json"

    @property
    def identity_dir(self) -> Path:
        return self.root / "identity"

    @property
    def parts_dir(self) -> Path:
        """Per-input-file work of an unfinished prepare: its checkpoint and its rejects."""
        return self.root / "parts"

    @property
    def rejects_path(self) -> Path:
        return self.root / "rejects.jsonl"

    def source_name(self, index: int) -> str:
        return self.sources[index].uri if index < len(self.sources) else f"input #{index}"


def load_mapping(settings: Settings, cli_overrides: dict) -> ColumnMapping:
    """The mapping file (--mapping), or the Python API's mapping dict, with the mapping options on top."""
    if settings.mapping_path:
        mapping = ColumnMapping.from_toml(settings.mapping_path)
    elif settings.mapping_tables is not None:
        mapping = ColumnMapping.from_tables(settings.mapping_tables, MAPPING_ARGUMENT)
    else:
        mapping = ColumnMapping()
    return mapping.override(**cli_overrides).validated()


# Files of one ending whose first records --format auto looks at, when the first ones are empty.
FILES_TO_SAMPLE = 3


def choose_format(settings: Settings, sources: list[SourceFile]) -> FormatChoice:
    """The format to read the inputs in, and why (for the user).

    ``--format auto`` first asks the registered adapters about the first records of the inputs (one file
    of each ending), so that a platform's export is read as one whatever its files are called; when no
    format recognises them, the files' endings decide.
    """
    if settings.format != "auto":
        adapter_class(settings.format)  # unknown names fail here, with the list of known ones
        return FormatChoice(settings.format, "as --format says")
    recognised = _format_of_the_rows(sources)
    if recognised is not None:
        return FormatChoice(recognised, f"recognised by their rows, which look like {_shape(recognised)}", True)
    zipped = next((s.uri for s in sources if split_member(s.uri)[1] is not None), None)
    if zipped is not None:
        raise ConfigError(
            f"{split_member(zipped)[0]}: give the format of the files inside the zip archive with --format "
            "(an Amplitude export, for example, is --format amplitude)"
        )
    formats = {detect_format(s.uri) for s in sources}
    if None in formats:
        unknown = next(s.uri for s in sources if detect_format(s.uri) is None)
        raise ConfigError(f"{unknown}: cannot tell its format from the name; give --format")
    if len(formats) > 1:
        raise ConfigError(
            f"the inputs mix formats ({', '.join(sorted(formats))}); run one job per format, or give --format"
        )
    return FormatChoice(formats.pop(), "from the file ending")


def _format_of_the_rows(sources: list[SourceFile]) -> str | None:
    """The format that recognises the first records of the inputs' first file of each ending, when one
    format recognises them all; else None."""
    by_ending: dict[str | None, list[SourceFile]] = {}
    for source in sources:
        by_ending.setdefault(detect_format(source.uri), []).append(source)
    found = set()
    for group in by_ending.values():
        records = next(filter(None, (first_records(source) for source in group[:FILES_TO_SAMPLE])), [])
        found.add(recognise_format(records))
    return found.pop() if len(found) == 1 else None


def _shape(format_name: str) -> str:
    """What a format's rows look like, in words: "a Mixpanel export (event and properties.time)"."""
    return adapter_class(format_name).recognised_shape or f"a {format_name} export"


def first_rows_problem(job: Job, sample_rows: int = 100) -> str | None:
    """Why the job cannot be right, judged from the first rows of its first file with rows, or None.

    That is: most of them would be rejected for one reason, or the adapter refuses the file, while another
    registered format recognises them. A wrong --format (or an export whose file names hide its platform)
    then stops before any work, with the format to use, instead of ending as a rejects file as long as the
    export. Rows that fail but look like no other format are the data's own problem: rejected as usual.
    Each row is judged as it is read and only the verdicts are kept, so huge rows are never held together.
    """
    for source in job.sources[:FILES_TO_SAMPLE]:
        chunks = job.adapter.read(source)
        judged = 0
        reasons: Counter = Counter()
        details: dict[str, str] = {}
        try:
            for chunk in chunks:
                for _, record in chunk[:sample_rows - judged]:
                    failure = _failure(job, record)
                    if failure is not None:
                        reasons[failure[0]] += 1
                        details.setdefault(*failure)
                judged += min(len(chunk), sample_rows - judged)
                if judged >= sample_rows:
                    break
        except ConfigError as refusal:  # e.g. "this is not an Amplitude export"
            hint = _other_format_hint(job, source)
            if hint is None:
                raise
            return f"{refusal} {hint}"
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        if judged:
            break
    else:
        return None
    if not reasons or reasons.most_common(1)[0][1] * 2 <= judged:
        return None
    hint = _other_format_hint(job, source)
    if hint is None:
        return None
    reason, count = reasons.most_common(1)[0]
    return (f"{source.uri}: {count} of its first {judged} rows would be rejected as {reason} "
            f"({details[reason]}), read as {job.format_name}. {hint}")


def _failure(job: Job, record: dict | BadRow) -> tuple[str, str] | None:
    """(reason, detail) when the record would be rejected, as the prepare phase would judge it; else None."""
    if isinstance(record, BadRow):
        return record.reason, record.detail
    try:
        for event in job.finisher.finish(job.adapter.to_events(record)):
            validate(event, utc_now_us())
    except Rejection as rejection:
        return rejection.reason, rejection.detail
    except Filtered:
        return None
    except Exception as error:  # as in prepare: an adapter's bug costs the row
        return "mapping_error", f"{type(error).__name__}: {error}"
    return None


def _other_format_hint(job: Job, source: SourceFile) -> str | None:
    """"These rows look like a Mixpanel export (...): --format mixpanel", when another format recognises them."""
    recognised = recognise_format(first_records(source))
    if recognised is None or recognised == job.format_name:
        return None
    return f"These rows look like {_shape(recognised)}: --format {recognised}."


def open_job(settings: Settings, cli_overrides: dict, create: bool = True, reuse_prepared: bool = True,
             stop: threading.Event | None = None, progress: Progress | None = None) -> Job:
    """Find the inputs, pick the adapter and check the mapping against the files: all before any work.

    ``amplitude://`` and ``mixpanel://`` sources are downloaded first, into the work directory (a prepared
    job's never again): their files are inputs like any other. ``stop`` interrupts the downloads.

    A job whose prepare finished (``manifest.json`` written) never reads its sources again, so it opens
    without them: its inputs are the ones it recorded, and those that are gone are noted in
    ``Job.gone_inputs`` (prepare still refuses inputs that are there with another content, or new ones);
    with ``--format auto`` its format is the one it was prepared in (its rows may be gone).
    ``reuse_prepared=False`` (inspect, which reads the sources) and ``--restart`` always need the inputs.
    ``progress`` shows the listing, and is the job's.
    """
    progress = progress or Progress()
    root = settings.job_directory()
    explicit_format = settings.format != "auto"
    # The job's own output is never an input, even when the work directory is inside an input folder.
    own_output = [root, *([settings.out] if settings.out else [])]
    manifest = read_json(root / "manifest.json") if reuse_prepared and not settings.restart else None
    arguments = tuple(argument for argument in settings.sources if not is_api_uri(argument))
    pulled = Pulled()
    if len(arguments) < len(settings.sources):
        from posthog_migrate.pull.stage import pull_api_sources  # (requests: only for jobs that pull)

        pulled = pull_api_sources(settings, root, manifest, stop, progress)
    bar = progress.bar(None, "files", "listing", delay=LISTING_PROGRESS_DELAY_SECONDS)
    try:
        if manifest is None:
            listing, gone = _list_with_downloads(arguments, pulled.files, explicit_format, own_output, bar.update), {}
        else:
            listing, gone = _inputs_of_prepared_job(arguments, pulled.files, explicit_format, manifest, own_output,
                                                    bar.update)
    finally:
        bar.close()
    sources = listing.sources
    if pulled.format is not None:
        choice = FormatChoice(pulled.format, f"the format of {pulled.format}:// sources")
    elif manifest is None or explicit_format:
        choice = choose_format(settings, sources)
    else:
        choice = FormatChoice(manifest["fingerprint"]["format"], "as the job was prepared")
    format_name = choice.name
    mapping = load_mapping(settings, cli_overrides)
    try:
        adapter = adapter_class(format_name)(mapping)
    except ConfigError as error:  # the adapter refuses its [source] settings: say which file holds them
        if settings.mapping_path:
            raise ConfigError(f"mapping file {settings.mapping_path}: {error}") from None
        if settings.mapping_tables is not None:
            raise ConfigError(f"{MAPPING_ARGUMENT}: {error}") from None
        raise
    if manifest is None and format_name in ("csv", "jsonl", "parquet"):
        # The first file that has columns stands for all: an empty file (no header) tells nothing.
        for source in sources:
            columns = adapter.columns(source)
            if columns:
                mapping.check_columns(columns, source.uri)
                break
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(unwritable_workdir_message(root, error)) from None
    return Job(settings, root, sources, adapter, format_name, mapping, job_id=settings.job_id(),
               format_reason=choice.reason, format_recognised=choice.recognised, gone_inputs=gone,
               skipped=listing.skipped, pulls=pulled.fingerprint, progress=progress)


def _list_with_downloads(arguments: tuple[str, ...], downloads: list[str], explicit_format: bool,
                         own_output: list[Path], on_listed: Callable[[int], None]) -> InputListing:
    """The inputs the arguments name, with the files the job downloaded from APIs: those lie in its own
    work directory, which a listing never reads otherwise."""
    listings = [list_inputs(arguments, explicit_format, own_output, on_listed)] if arguments else []
    if downloads:
        listings.append(list_inputs(downloads, True, (), on_listed))
    return joined_listings(listings)


def unwritable_workdir_message(root: Path, error: OSError) -> str:
    """What to say when the work directory cannot be made or written (a file in its path, a read-only disk)."""
    return (f"cannot write the job's work directory {root} ({error.strerror}): give a folder you can write "
            "to with --workdir DIR")


def _inputs_of_prepared_job(arguments: tuple[str, ...], downloads: list[str], explicit_format: bool, manifest: dict,
                            own_output: list[Path], on_listed: Callable[[int], None],
                            ) -> tuple[InputListing, dict[str, dict]]:
    """The inputs of a prepared job: those it recorded (gone or not) and any the arguments name now, with
    the recorded ones that are gone.

    Each argument (and each file downloaded from an API) is listed on its own, and one that names nothing any
    more (moved, deleted) adds nothing.
    A file found now that the job did not record keeps its place in the sorted list, so that prepare
    names it as added and refuses, as for any other change of inputs.
    """
    found: dict[str, SourceFile] = {}
    skipped: list[SkippedInput] = []
    for argument, explicit, excluded in [*((a, explicit_format, own_output) for a in arguments),
                                         *((d, True, []) for d in downloads)]:
        try:
            listing = list_inputs([argument], explicit, excluded, on_listed)
        except ConfigError:  # nothing there any more: the work directory holds what the job needs
            continue
        found.update((source.uri, source) for source in listing.sources)
        skipped += listing.skipped
    recorded = {entry["uri"]: entry for entry in manifest["fingerprint"]["inputs"]}
    gone = {uri: entry for uri, entry in recorded.items() if uri not in found}
    sources = [found.get(uri) or SourceFile(uri=uri, index=0, size=recorded[uri]["size"],
                                            mtime_ns=recorded[uri]["mtime_ns"])
               for uri in sorted(found.keys() | recorded.keys())]
    return InputListing([replace(source, index=index) for index, source in enumerate(sources)], skipped), gone


class JobLock:
    """One process per job at a time: two would send the same batches and race on state.json."""

    def __init__(self, root: Path):
        self.path = root / ".lock"
        self._handle = None

    def __enter__(self) -> JobLock:
        try:
            self._handle = open(self.path, "a+")  # noqa: SIM115 - closed by __exit__
        except OSError as error:
            raise ConfigError(unwritable_workdir_message(self.path.parent, error)) from None
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise ConfigError(
                f"another posthog-migrate process is running this job ({self.path.parent}); wait for it, "
                "or stop it (Ctrl-C saves its checkpoint)"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


# --- prepare -----------------------------------------------------------------------------------------

def job_fingerprint(job: Job) -> dict:
    """What a prepared job depends on; a resume refuses when any of it changed.

    Round-tripped through JSON so it compares equal to the copy read back from the manifest.
    """
    return orjson.loads(orjson.dumps({
        "job_id": job.job_id,  # every event carries it as $import_job_id
        "format": job.format_name,
        "mapping": job.mapping.to_dict(),
        "shard": job.settings.shard_pair(),
        "inputs": [job.gone_inputs.get(source.uri) or fingerprint(source) for source in job.sources],
        "lookups": [fingerprint_path(uri) for uri in job.adapter.extra_inputs()],
        **({"pulls": job.pulls} if job.pulls else {}),  # absent for files: jobs prepared before pulls match
    }))


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """What differs between the fingerprint a job was prepared with and today's, as lines for a person
    (none: the same job). Inputs are compared by content, so a file whose mtime alone changed is unchanged."""
    lines = []
    if old.get("job_id") != new.get("job_id"):
        lines.append(f"job name: {old.get('job_id', '(not recorded)')} → {new.get('job_id')}")
    if old.get("format") != new["format"]:
        lines.append(f"format: {old.get('format')} → {new['format']}")
    if old.get("shard") != new.get("shard"):
        lines.append(f"shard: {old.get('shard')} → {new.get('shard')}")
    if old.get("mapping") != new["mapping"]:
        changed = sorted(k for k in new["mapping"] if old.get("mapping", {}).get(k) != new["mapping"][k])
        lines.append(f"mapping changed ({', '.join(changed)})")
    lines += describe_changes(old.get("inputs", []), new["inputs"])
    lines += describe_changes(old.get("lookups", []), new.get("lookups", []))
    old_pulls, new_pulls = ([entry["source"] for entry in fp.get("pulls", [])] for fp in (old, new))
    lines += [f"no longer pulled: {key}" for key in old_pulls if key not in new_pulls]
    lines += [f"now pulled: {key}" for key in new_pulls if key not in old_pulls]
    if old_pulls == new_pulls and old.get("pulls") != new.get("pulls"):
        lines.append("downloaded again: " + ", ".join(new_pulls))
    described = {"job_id", "format", "shard", "mapping", "inputs", "lookups", "pulls"}
    lines += [f"{key} changed" for key in sorted((old.keys() | new.keys()) - described) if old.get(key) != new.get(key)]
    return lines


PREPARED_FILES = ("manifest.json", "prepare.json", "state.json", "rejects.jsonl")
PREPARED_FOLDERS = ("runs", "identity", "parts")


def reset_job(root: Path) -> None:
    """--restart: forget everything about the job (the local capture server's output is kept)."""
    for name in PREPARED_FILES:
        (root / name).unlink(missing_ok=True)
    for name in PREPARED_FOLDERS:
        shutil.rmtree(root / name, ignore_errors=True)
    for retry in root.glob("retry-*"):  # retries of the rejects of the job being forgotten
        shutil.rmtree(retry, ignore_errors=True)


@dataclass
class RetryPlan:
    job: Job
    retriable: int
    unreadable: Counter


def open_retry_job(settings: Settings, original_root: Path, cli_overrides: dict) -> RetryPlan:
    """A job of its own, under the original's work directory, whose input is the retriable rejects.

    The mapping is the original job's unless ``--mapping`` or mapping options are given; each mapping
    gets its own retry job (``retry-<hash>``), so a retry with a fixed mapping never mixes with an earlier one.
    """
    manifest = read_json(original_root / "manifest.json")
    if manifest is None:
        raise ConfigError(f"{original_root} is not a prepared job (no manifest.json): run it first")
    original_format = manifest["fingerprint"]["format"]
    if settings.mapping_path:
        mapping = ColumnMapping.from_toml(settings.mapping_path)
    else:
        mapping = ColumnMapping.from_dict(manifest["fingerprint"]["mapping"])
    mapping = mapping.override(**cli_overrides).validated()
    root = original_root / f"retry-{digest(mapping.to_dict())[:8]}"
    root.mkdir(parents=True, exist_ok=True)
    input_path = root / "rejected-rows.jsonl"
    retriable, unreadable = _write_retry_input(original_root, manifest, input_path)
    sources = expand_sources([str(input_path)], explicit_format=True)
    adapter = RejectsAdapter(mapping, adapter_class(original_format))
    job = Job(replace(settings, sources=(str(input_path),)), root, sources, adapter, f"rejects of {original_format}",
              mapping, job_id=manifest.get("job_id", original_root.name), import_source=original_format)
    return RetryPlan(job, retriable, unreadable)


def _write_retry_input(original_root: Path, manifest: dict, input_path: Path) -> tuple[int, Counter]:
    """Copy the retriable lines of the original's rejects file to ``input_path``, a line at a time.

    Only the part the original job's checkpoint covers is read: lines past it belong to batches a resume
    will send (and judge) again. The file is replaced only when its content changes, so a resumed retry
    still matches its fingerprint.
    """
    rejects_path = original_root / "rejects.jsonl"
    state = read_json(original_root / "state.json") or {}
    covered = state.get("send", {}).get("rejects_bytes", manifest["rejects_bytes"])
    temporary = input_path.with_name(input_path.name + ".tmp")
    retriable, unreadable = 0, Counter()
    with open(temporary, "wb") as out:
        if rejects_path.exists():
            with open(rejects_path, "rb") as rejects:
                for line in _lines_within(rejects, covered):
                    reject = orjson.loads(line)
                    if is_retriable(reject):
                        out.write(line if line.endswith(b"\n") else line + b"\n")
                        retriable += 1
                    else:
                        unreadable[reject["reason"]] += 1
    if input_path.exists() and filecmp.cmp(temporary, input_path, shallow=False):
        temporary.unlink()
    else:
        os.replace(temporary, input_path)
    return retriable, unreadable


def _lines_within(handle: IO[bytes], limit: int) -> Iterator[bytes]:
    """The whole lines among the first ``limit`` bytes of a file."""
    read = 0
    for line in handle:
        read += len(line)
        if read > limit or not line.endswith(b"\n"):
            return
        yield line
