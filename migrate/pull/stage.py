"""The pull stage: download ``amplitude://`` and ``mixpanel://`` sources into the job, before prepare.

Each source's range is cut into chunks (:mod:`posthog_migrate.pull.sources`), each a request
(:mod:`posthog_migrate.pull.fetch`). A chunk's body is written to a temporary name, verified
(:mod:`posthog_migrate.pull.verify`) and only then renamed into place, and its size and SHA-256 recorded in
``downloads/pull.json``. From then on it is an input file like any other: prepare reads it with the
Amplitude or Mixpanel adapter, per file, on every core, with per-file resume. A killed pull asks again only
for the chunks that were not complete (from their start); a complete chunk is never downloaded again, nor is
anything once the job is prepared. Work directory::

    downloads/pull.json                            each source's chunks, and what each complete one holds
    downloads/amplitude-export-1a2b3c4d/20240101T00-20240101T23.zip
    downloads/mixpanel-export-5e6f7a8b/2024-01-01_2024-01-31.jsonl.gz   (.jsonl when Mixpanel did not gzip it)
    downloads/mixpanel-engage-9c0d1e2f/page-00000.json                  (Engage's page objects, as answered;
                                                                         group profiles' with their group_type)

The job's fingerprint holds each source's URI without its endpoint (never with credentials) and its chunks:
a job prepared from one range refuses another, as it refuses a changed input file.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from threading import Event

import orjson
from posthog_migrate.checkpoint import atomic_write_json, crash_point, read_json
from posthog_migrate.config import Settings
from posthog_migrate.diskspace import human_bytes
from posthog_migrate.errors import ConfigError
from posthog_migrate.job import JobLock
from posthog_migrate.pull import verify
from posthog_migrate.pull.credentials import Credentials, load_credentials
from posthog_migrate.pull.fetch import BadRequest, Body, Fetcher, FetchSettings, TooBig
from posthog_migrate.pull.sources import HOUR, ApiSource, Chunk, Pulled, is_api_uri, parse_api_uri
from posthog_migrate.render import Bar, Progress

DOWNLOADS_FOLDER = "downloads"
BOOK_NAME = "pull.json"
BOOK_VERSION = 1
# How late data arrives (source-apis.md): Amplitude's export has events ~2 h after it receives them; Mixpanel's
# mobile data can land up to 5 days late.
FRESHNESS = {"amplitude": timedelta(hours=2), "mixpanel": timedelta(days=5)}
ENGAGE_PAGE_SIZE = 1000


def pull_api_sources(settings: Settings, root: Path, manifest: dict | None, stop: Event | None = None,
                     progress: Progress | None = None) -> Pulled:
    """Download the API sources among the arguments (nothing when there are none).

    ``manifest``: the prepared job's, when it is reused; its sources are never downloaded again, and a
    different range is refused before anything is asked of the API.
    """
    sources = [parse_api_uri(argument) for argument in settings.sources if is_api_uri(argument)]
    if not sources:
        return Pulled()
    vendors = {source.vendor for source in sources}
    if len(vendors) > 1:
        raise ConfigError("amplitude:// and mixpanel:// sources in one job: run one job per platform")
    vendor = vendors.pop()
    if settings.format not in ("auto", vendor):
        raise ConfigError(f"--format {settings.format}: {vendor}:// sources are read as {vendor}; leave --format out")
    if manifest is not None:
        recorded = _recorded_pulls(manifest, sources, root)
        return Pulled(_files_of(root, recorded), vendor, recorded)
    downloads = root / DOWNLOADS_FOLDER
    downloads.mkdir(parents=True, exist_ok=True)
    with JobLock(root):
        if settings.redownload:
            for source in sources:
                shutil.rmtree(downloads / source.folder, ignore_errors=True)
            (downloads / BOOK_NAME).unlink(missing_ok=True)
        book = Book(downloads)
        credentials = load_credentials(settings.source_credentials)
        pulls = []
        for source in sources:
            puller = SourcePuller(source, book, settings, credentials, stop or Event(), progress or Progress())
            pulls.append(puller.pull())
    pulled = Pulled(_files_of(root, pulls), vendor, pulls)
    if not pulled.files and not [argument for argument in settings.sources if not is_api_uri(argument)]:
        raise ConfigError(f"{', '.join(source.key for source in sources)}: no data in the range (every chunk "
                          "answered that it holds none); check the dates (UTC, both inclusive)")
    return pulled


def _recorded_pulls(manifest: dict, sources: list[ApiSource], root: Path) -> list[dict]:
    """The prepared job's record of its sources, when the arguments name the same ones; else refuse, naming
    what changed, before anything is downloaded."""
    recorded = manifest["fingerprint"].get("pulls", [])
    before = [entry["source"] for entry in recorded]
    now = [source.key for source in sources]
    if before != now:
        changes = [f"no longer pulled: {key}" for key in before if key not in now]
        changes += [f"now pulled: {key}" for key in now if key not in before]
        raise ConfigError(
            f"job {root} was prepared from different inputs or mapping: "
            f"{'; '.join(changes) or 'the sources are given in another order'}. To migrate the new "
            "range as a new job, give --job NAME; to start this job over (events already sent are re-sent with "
            "the same uuids, which PostHog collapses), add --restart (the complete downloads are kept).")
    return recorded


def _files_of(root: Path, pulls: list[dict]) -> list[str]:
    """The downloaded files of the sources' chunks (an empty chunk has none), as absolute paths."""
    downloads = (root / DOWNLOADS_FOLDER).absolute()
    return [str(downloads / entry["folder"] / chunk["file"])
            for entry in pulls for chunk in entry["chunks"] if chunk.get("file")]


class Book:
    """``downloads/pull.json``: each source's chunks (its plan, halved where the API asked), and for each
    complete one its file (none when empty), size and SHA-256; for Engage, the page cursor. Rewritten
    atomically after every change, so that a kill at any instant leaves the last state whole."""

    def __init__(self, folder: Path):
        self.path = folder / BOOK_NAME
        data = read_json(self.path)
        self.sources: dict[str, dict] = data["sources"] if data and data.get("version") == BOOK_VERSION else {}

    def entry(self, key: str, new: Callable[[], dict]) -> dict:
        return self.sources.setdefault(key, new())

    def save(self) -> None:
        atomic_write_json(self.path, {"version": BOOK_VERSION, "sources": self.sources})


class SourcePuller:
    """Downloads one source's chunks (or pages) not yet complete, one request at a time."""

    def __init__(self, source: ApiSource, book: Book, settings: Settings, credentials: Credentials, stop: Event,
                 progress: Progress):
        self.source = source
        self.book = book
        self.folder = book.path.parent / source.folder
        self.folder.mkdir(exist_ok=True)
        for leftover in self.folder.glob(".*.part"):  # a body cut short by a kill: asked for again, whole
            leftover.unlink()
        self.progress = progress
        self.bar: Bar | None = None
        self.done = self.total = 0  # chunks (or pages): a --quiet bar counts nothing
        self.bytes_now = 0
        self.started = time.monotonic()
        self.fetcher = Fetcher(source, credentials, FetchSettings(
            max_retries=settings.max_retries, retry_delay=settings.retry_delay, stop=stop, notify=progress.note,
            on_bytes=self._on_bytes, waiting=self._show_waiting))

    def pull(self) -> dict:
        """Download what is missing; return the source's entry for the job's fingerprint."""
        if self.source.kind == "engage":
            return self._pull_pages()
        entry = self.book.entry(self.source.key, lambda: {"folder": self.source.folder,
                                                          "chunks": [c.to_dict() for c in self.source.plan()]})
        chunks = entry["chunks"]
        for chunk in chunks:
            if not self._still_there(chunk):
                self.progress.note(f"{self.folder / chunk['file']}: missing or changed since it was downloaded; "
                                   "downloading it again")
                for key in ("file", "bytes", "sha256"):
                    chunk.pop(key)
        pending = [chunk for chunk in chunks if "bytes" not in chunk and not self._adopt(chunk)]
        if pending:
            self._warn_if_fresh()
            self.done, self.total = len(chunks) - len(pending), len(chunks)
            self.bar = self.progress.bar(self.total, "chunks", f"downloading {self.source.label}",
                                         initial=self.done)
            try:
                while pending:
                    self._download(pending.pop(0), chunks, pending)
            finally:
                self.bar.close()
        empty = sum(1 for chunk in chunks if not chunk.get("file"))
        self.progress.info(f"{self.source.label} {self.source.first:%Y-%m-%d %H:00} → "
                           f"{self.source.last:%Y-%m-%d %H:00} UTC: {len(chunks):,} chunks downloaded "
                           f"({empty:,} empty: no data), {human_bytes(sum(chunk['bytes'] for chunk in chunks))} "
                           f"in {self.folder}")
        return {"source": self.source.key, "folder": self.source.folder,
                "chunks": [{key: chunk[key] for key in ("name", "file", "bytes", "sha256") if key in chunk}
                           for chunk in chunks]}

    # -- export chunks --------------------------------------------------------------------------------

    def _download(self, chunk: dict, chunks: list[dict], pending: list[dict]) -> None:
        span = Chunk.from_dict(chunk)
        temporary = self.folder / f".{span.name}.part"
        verifier = verify.amplitude_zip if self.source.vendor == "amplitude" else verify.json_lines
        try:
            body = self.fetcher.fetch(f"chunk {span.name}", self._query(span), None, temporary, verifier,
                                      self._chunks_done, splittable=span.halves() is not None)
        except TooBig as too_big:
            halves = [half.to_dict() for half in span.halves()]
            at = chunks.index(chunk)
            chunks[at:at + 1] = halves
            pending[:0] = halves
            self.book.save()
            self.total += 1
            self.bar.total = self.total
            self.bar.refresh()
            self.progress.note(f"{self.source.label} chunk {span.name}: {too_big}; asking for it in two halves "
                 f"({halves[0]['name']}, {halves[1]['name']})")
            return
        self._keep(chunk, body, temporary)

    def _keep(self, chunk: dict, body: Body | None, temporary: Path) -> None:
        """Give a verified body its final name, then record it; an empty answer is recorded as complete."""
        if body is not None and body.has_data:
            name = chunk["name"] + self._ending(temporary)
            os.replace(temporary, self.folder / name)
            crash_point("after-download-rename")
            chunk.update(file=name, bytes=body.size, sha256=body.sha256)
        else:
            temporary.unlink(missing_ok=True)
            chunk.update(file=None, bytes=0)
        self.book.save()
        self.done += 1
        self.bar.update(1)
        crash_point("after-download")

    def _still_there(self, chunk: dict) -> bool:
        """Whether a complete chunk's file is there, of the size it was downloaded at (an empty chunk is)."""
        if not chunk.get("file"):
            return True
        path = self.folder / chunk["file"]
        return path.is_file() and path.stat().st_size == chunk["bytes"]

    def _adopt(self, chunk: dict) -> bool:
        """A chunk renamed into place by a run killed before it could record it: verified, then recorded (it
        was verified before the rename too; this only re-reads it)."""
        for ending in (".zip", ".jsonl", ".jsonl.gz"):
            path = self.folder / (chunk["name"] + ending)
            if path.exists():
                checker = verify.amplitude_zip if ending == ".zip" else verify.json_lines
                try:
                    checker(path)
                except verify.Incomplete:
                    path.unlink()
                    return False
                chunk.update(file=path.name, bytes=path.stat().st_size, sha256=_sha256(path))
                self.book.save()
                return True
        return False

    def _ending(self, temporary: Path) -> str:
        if self.source.vendor == "amplitude":
            return ".zip"
        with open(temporary, "rb") as handle:
            return ".jsonl.gz" if handle.read(2) == verify.GZIP_MAGIC else ".jsonl"

    def _query(self, span: Chunk) -> dict:
        if self.source.vendor == "amplitude":
            return {"start": f"{span.first:%Y%m%dT%H}", "end": f"{span.last:%Y%m%dT%H}"}
        query = {"from_date": f"{span.first:%Y-%m-%d}", "to_date": f"{span.last:%Y-%m-%d}", "time_in_ms": "true"}
        for name in ("project_id", "where"):
            if self.source.parameter(name):
                query[name] = self.source.parameter(name)
        if self.source.parameter("event"):
            names = [name.strip() for name in self.source.parameter("event").split(",") if name.strip()]
            query["event"] = orjson.dumps(names).decode()
        return query

    def _warn_if_fresh(self) -> None:
        lateness = FRESHNESS[self.source.vendor]
        unit = HOUR if self.source.vendor == "amplitude" else timedelta(days=1)
        ends = self.source.last + unit
        if ends > datetime.now(UTC) - lateness:
            late = "about 2 hours after it receives them" if self.source.vendor == "amplitude" else \
                "up to 5 days late (mobile devices send what they held offline)"
            self.progress.note(f"Warning: the range ends {self.source.last:%Y-%m-%d %H:00} UTC, less than "
                 f"{'2 hours' if unit == HOUR else '5 days'} ago: {self.source.vendor.capitalize()} exports events "
                 f"{late}, so those exported later are not in this job. Pull the tail later as a job of its own "
                 "(start= the last day of this one): events sent twice have the same uuids, which PostHog collapses.")

    # -- Engage pages ---------------------------------------------------------------------------------

    def _pull_pages(self) -> dict:
        """Engage's pages of profiles, 1,000 each, in one listing (session_id) until a short page; the page
        cursor is recorded after every page, so a killed pull continues at the next one."""
        entry = self.book.entry(self.source.key, lambda: {"folder": self.source.folder, "session_id": None,
                                                          "pages": [], "finished": False})
        if not all(self._still_there(page) for page in entry["pages"]):
            self.progress.note(f"{self.source.label}: a downloaded page is missing or changed; listing the profiles "
                               "again")
            self._forget_pages(entry)
        resumed = bool(entry["pages"])
        if not entry["finished"]:
            self.bar = self.progress.bar(None, "pages", f"downloading {self.source.label}",
                                         initial=len(entry["pages"]))
            try:
                while not entry["finished"]:
                    resumed = self._next_page(entry, resumed)
            finally:
                self.bar.close()
        return {"source": self.source.key, "folder": self.source.folder,
                "chunks": [{key: page[key] for key in ("name", "file", "bytes", "sha256")} for page in entry["pages"]]}

    def _next_page(self, entry: dict, resumed: bool) -> bool:
        number = len(entry["pages"])
        form = {name: value for name, value in self.source.parameters
                if name not in ("project_id", "workspace_id", "region", "group_type")}
        if entry["session_id"] is not None:
            form.update(session_id=entry["session_id"], page=str(number))
        query = {name: self.source.parameter(name) for name in ("project_id", "workspace_id")
                 if self.source.parameter(name)}
        temporary = self.folder / f".page-{number:05d}.part"
        try:
            body = self.fetcher.fetch(f"page {number}", query, form, temporary,
                                      lambda path: bool(verify.engage_page(path.read_bytes())),
                                      lambda: f"{number} pages done", splittable=False)
        except BadRequest:
            if not resumed:
                raise
            # The listing's session expired while the pull was stopped: list the profiles again, from the start.
            self.progress.note(f"{self.source.label}: the listing of a stopped pull could not be continued; listing "
                               "the profiles again from the first page")
            self._forget_pages(entry)
            self.bar.close()  # a bar of its own for the new listing, from its first page
            self.bar = self.progress.bar(None, "pages", f"downloading {self.source.label}")
            return False
        page = verify.engage_page(body.path.read_bytes())
        size = page.get("page_size") if isinstance(page.get("page_size"), int) else ENGAGE_PAGE_SIZE
        if isinstance(page.get("total"), int) and size > 0:
            self.bar.total = max(1, math.ceil(page["total"] / size))
        if page["results"]:
            name = f"page-{number:05d}"
            size_bytes, sha256 = body.size, body.sha256
            if self.source.parameter("group_type"):  # the page says whose profiles it holds: the group type's
                data = orjson.dumps({**page, "data_group_id": self.source.parameter("data_group_id"),
                                     "group_type": self.source.parameter("group_type")})
                body.path.write_bytes(data)
                size_bytes, sha256 = len(data), hashlib.sha256(data).hexdigest()
            os.replace(body.path, self.folder / f"{name}.json")
            entry["pages"].append({"name": name, "file": f"{name}.json", "bytes": size_bytes, "sha256": sha256})
        else:  # past the last profile: nothing to keep
            body.path.unlink()
        entry["session_id"] = entry["session_id"] or page.get("session_id")
        entry["finished"] = len(page["results"]) < max(size, 1) or not page.get("session_id")
        self.book.save()
        self.bar.update(1)
        crash_point("after-engage-page")
        return resumed

    def _forget_pages(self, entry: dict) -> None:
        """Start the profile listing over: the pages of another listing session would overlap or miss some."""
        for path in self.folder.glob("page-*.json"):
            path.unlink()
        entry.update(session_id=None, pages=[], finished=False)
        self.book.save()

    # -- progress -------------------------------------------------------------------------------------

    def _chunks_done(self) -> str:
        return f"{self.done}/{self.total} chunks done"

    def _on_bytes(self, count: int) -> None:
        self.bytes_now += count
        if self.bar is not None:
            rate = self.bytes_now / max(time.monotonic() - self.started, 1e-3)
            self.bar.set_postfix_str(f"{human_bytes(self.bytes_now)} at {human_bytes(rate)}/s", refresh=False)

    def _show_waiting(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
