"""Finding the input files: paths, folders, globs and ``s3://`` URIs, in a stable order, each real file once,
and what the arguments hold that is not read (every such file is listed, with the reason).

The order matters: a file's index in the sorted list is part of every event's sort key (the tie-breaker
after the timestamp), so the same inputs always produce the same event order and the same batches.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import stat
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from posthog_migrate.adapters import detect_format
from posthog_migrate.adapters.base import (
    ZIP_MEMBER_SEPARATOR,
    SourceFile,
    file_name,
    filesystem_for,
    open_seekable,
    split_member,
)
from posthog_migrate.errors import ConfigError
from pyarrow import fs as pafs

# Files that export tools leave beside the data and that are never rows.
IGNORED_NAMES = ("_SUCCESS", "_manifest", ".DS_Store")
IGNORED_PREFIXES = (".", "_")
IGNORED_ENDINGS = (".crc", ".md5", ".json.manifest")
# A folder holding a lock file and one of these is a posthog-migrate job's work directory: never an input.
JOB_DIRECTORY_MARKS = ("manifest.json", "prepare.json", "state.json", "local-capture", "runs")
# The folder of a work directory where the Python API keeps its copies of in-memory inputs (DataFrames, Arrow
# tables, records): named as arguments, they are read like any input, though inside the work directory.
SPOOLED_INPUTS = "inputs"
# A fingerprint reads this much from each end of a file: cheap, and catches rewritten exports of equal size.
FINGERPRINT_SAMPLE_BYTES = 64 * 1024
_GLOB_CHARS = set("*?[")
HIDDEN_FOLDER = "a hidden or _ folder (.git, export tools' temporary files)"


@dataclass(frozen=True, slots=True)
class SkippedInput:
    """A file or folder the arguments name or hold that is not read, and why: every one is listed."""

    uri: str
    why: str


@dataclass(slots=True)
class InputListing:
    """What the arguments name: the files to read, in order, and what was passed over."""

    sources: list[SourceFile]
    skipped: list[SkippedInput]


@dataclass(slots=True)
class _Found:
    """A file found, before the listing is sorted: its size, mtime and what makes it the same file as
    another path to it (device and inode; None for object stores)."""

    size: int
    mtime_ns: int
    identity: tuple[int, int] | None = None
    through_link: bool = False  # found through a symlinked folder or as a symlink: a copy of it wins


def ignored_reason(name: str) -> str | None:
    """Why a file of this name is never read in a folder (export tools' markers, checksums, hidden files)."""
    base = name.rsplit("/", 1)[-1]
    if base in IGNORED_NAMES or base.endswith(IGNORED_ENDINGS):
        return "a marker or checksum file that export tools leave beside the data"
    if base.startswith("."):
        return "a hidden file"
    if base.startswith("_"):
        return "a name starting with _ (export tools' temporary files)"
    return None


def _hidden_folder_below(folder: str, path: str) -> bool:
    """Whether ``path`` lies in a hidden/underscore sub-folder of ``folder`` (``.git``, ``.ipynb_checkpoints``
    copies, Spark's in-progress ``_temporary``)."""
    relative = path[len(folder):].strip("/") if path.startswith(folder) else path.rsplit("/", 1)[-1]
    return any(part.startswith(IGNORED_PREFIXES) for part in relative.split("/")[:-1])


def printable(uri: str) -> str:
    """A name safe to print and to store as JSON: undecodable bytes of a file name shown as \\xNN."""
    return uri.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    return filesystem_for(uri)


def _to_uri(original: str, path: str) -> str:
    """The URI of ``path`` found under ``original``, keeping its scheme and any ``?query`` settings."""
    if "://" in original:
        scheme = original.split("://", 1)[0]
        query = original.split("?", 1)[1] if "?" in original else ""
        return f"{scheme}://{path}" + (f"?{query}" if query else "")
    return path


def _is_pattern(argument: str) -> bool:
    """Whether the argument is a glob. Only the path counts: an ``s3://`` URI's ``?query`` (settings such as
    ``endpoint_override=host:port&scheme=http``) is not part of the pattern."""
    if "://" not in argument:
        return bool(_GLOB_CHARS & set(argument))
    try:
        path = urlsplit(argument).path
    except ValueError:  # e.g. an unbalanced "[" in the bucket name: urlsplit takes it for an IPv6 address
        path = argument.split("?", 1)[0]
    return bool(_GLOB_CHARS & set(path))


def expand_sources(arguments: Iterable[str], explicit_format: bool) -> list[SourceFile]:
    """Every input file named by the command line, sorted by URI, each once (see :func:`list_inputs`)."""
    return list_inputs(arguments, explicit_format).sources


def list_inputs(arguments: Iterable[str], explicit_format: bool, excluded: Iterable[Path] = (),
                on_listed: Callable[[int], None] | None = None) -> InputListing:
    """Every input file named by the command line, sorted by URI, each once, and what was passed over.

    Folders are walked recursively. Without ``--format``, only files whose ending names a format are
    taken from folders; with it, every visible file is. Each real file is read once, whatever links lead
    to it; symlinked folders are followed unless they lead to a folder already read (a loop, or a second
    name such as ``latest -> 2024``). The ``excluded`` folders (the job's own work directory, the dry
    run's output) and any other posthog-migrate work directory are never inputs. ``on_listed(n)`` is told
    of every n files looked at (the listing's progress).
    """
    listing = _Listing(explicit_format, excluded, on_listed or (lambda _: None))
    for argument in arguments:
        listing.add_argument(argument)
    return listing.finish()


class _Listing:
    """The files found so far, by URI, and what was passed over."""

    def __init__(self, explicit_format: bool, excluded: Iterable[Path], on_listed: Callable[[int], None]):
        self.explicit_format = explicit_format
        self.excluded = {os.path.realpath(path) for path in excluded}
        self.on_listed = on_listed
        self.found: dict[str, _Found] = {}
        self.skipped: list[SkippedInput] = []
        self.walked: dict[str, str] = {}  # real path of every local folder walked → the name it was walked as
        self.read_in_folders = 0  # files a folder walk took, or found already taken (folders read twice too)

    def skip(self, uri: str, why: str) -> None:
        self.skipped.append(SkippedInput(printable(uri), why))

    def add_argument(self, argument: str) -> None:
        if "://" not in argument:
            self._add_local(argument)
            return
        filesystem, path = _filesystem(argument)
        if _is_pattern(argument):
            infos = _remote_glob(filesystem, path)
            if not infos:
                raise ConfigError(f"{argument}: the pattern matches no files")
            self._take_matches(argument, [(info.path, info) for info in infos])
            return
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ConfigError(f"{argument}: no such file or folder")
        if info.type != pafs.FileType.Directory:
            self.found[_to_uri(argument, info.path)] = _Found(info.size or 0, info.mtime_ns or 0)
            return
        taken = 0
        for info in filesystem.get_file_info(pafs.FileSelector(path, recursive=True)):
            self.on_listed(1)
            uri = _to_uri(argument, info.path)
            if info.type != pafs.FileType.File:
                continue
            if _hidden_folder_below(path, info.path):
                self.skip(uri, f"in {HIDDEN_FOLDER}")
            elif self._taken_from_folder(uri):
                self.found[uri] = _Found(info.size or 0, info.mtime_ns or 0)
                taken += 1
        if not taken:
            raise _no_known_files(argument)

    def _taken_from_folder(self, uri: str) -> bool:
        """Whether a file found in a folder is read; if not, it is listed as skipped with the reason."""
        why = ignored_reason(uri.split("?", 1)[0] if "://" in uri else uri)
        if why is None and not self.explicit_format and detect_format(uri) is None:
            why = "its ending names no format (give --format to read every file)"
        if why is not None:
            self.skip(uri, why)
        return why is None

    # -- local files and folders --------------------------------------------------------------------

    def _add_local(self, argument: str) -> None:
        path = os.path.abspath(argument)
        if _is_pattern(argument):
            matches = sorted(glob.glob(path, recursive=True))
            files = [match for match in matches if os.path.isfile(match)]
            if not files:
                raise ConfigError(f"{argument}: the pattern matches no files")
            self._take_matches(argument, [(match, None) for match in files])
            return
        try:
            status = os.stat(path)
        except FileNotFoundError:
            raise ConfigError(f"{argument}: no such file or folder") from None
        except OSError as error:
            raise ConfigError(f"{printable(argument)}: cannot read it ({error.strerror})") from None
        if stat.S_ISDIR(status.st_mode):
            before = self.read_in_folders
            self._walk(path)
            if self.read_in_folders == before:
                raise _no_known_files(argument)
        elif self._not_excluded(path):
            self._take_local(path, status, through_link=os.path.islink(path))

    def _take_matches(self, argument: str, matches: list[tuple[str, pafs.FileInfo | None]]) -> None:
        """A glob's matches: what export tools leave beside the data is skipped, as in a folder."""
        for path, info in matches:
            uri = _to_uri(argument, path)
            why = ignored_reason(path)
            if why is not None:
                self.skip(uri, why)
            elif info is not None:
                self.found[uri] = _Found(info.size or 0, info.mtime_ns or 0)
            elif self._not_excluded(path):
                self._take_local(path, os.stat(path), through_link=os.path.islink(path))

    def _not_excluded(self, path: str) -> bool:
        real = os.path.realpath(path)
        for folder in self.excluded:
            inside = folder.rstrip("/") + "/"
            if real.startswith(inside) and not real.startswith(f"{inside}{SPOOLED_INPUTS}/"):
                self.skip(path, "inside the job's work directory")
                return False
        return True

    def _take_local(self, path: str, status: os.stat_result, through_link: bool) -> None:
        self.found[path] = _Found(status.st_size, status.st_mtime_ns, (status.st_dev, status.st_ino), through_link)

    def _walk(self, top: str) -> None:
        """Walk a local folder: real sub-folders first, then the symlinked ones (so that a folder's own name
        wins over a link to it), each real folder once."""
        links: list[str] = []
        self._walk_tree(top, links, through_link=os.path.islink(top))
        while links:
            link = links.pop(0)
            real = os.path.realpath(link)
            if real in self.walked:
                parent = os.path.realpath(os.path.dirname(link))
                loop = parent == real or parent.startswith(real.rstrip("/") + "/")
                self.skip(link + "/", f"a symlink {'loop: it leads back to' if loop else 'to'} "
                                      f"{printable(self.walked[real])}, read once")
            else:
                self._walk_tree(link, links, through_link=True)

    def _walk_tree(self, top: str, links: list[str], through_link: bool) -> None:
        folders = [top]
        while folders:
            folder = folders.pop()
            real = os.path.realpath(folder)
            if real in self.excluded:
                self.skip(folder + "/", "the job's work directory")
                continue
            if real in self.walked:
                self.skip(folder + "/", f"the same folder as {printable(self.walked[real])}, read once")
                self.read_in_folders += 1
                continue
            self.walked[real] = folder
            try:
                with os.scandir(folder) as scan:
                    entries = sorted(scan, key=lambda entry: entry.name, reverse=True)
            except OSError as error:
                self.skip(folder + "/", f"cannot be listed ({error.strerror})")
                continue
            for entry in entries:
                self.on_listed(1)
                self._look_at(entry, folders, links, through_link)

    def _look_at(self, entry: os.DirEntry, folders: list[str], links: list[str], through_link: bool) -> None:
        try:
            is_folder = entry.is_dir()
            is_file = entry.is_file()
        except OSError as error:
            self.skip(entry.path, f"cannot be read ({error.strerror})")
            return
        if is_folder:
            if entry.name.startswith(IGNORED_PREFIXES):
                self.skip(entry.path + "/", HIDDEN_FOLDER)
            elif _is_job_directory(entry.path):
                self.skip(entry.path + "/", "a posthog-migrate work directory")
            elif entry.is_symlink():
                links.append(entry.path)
            else:
                folders.append(entry.path)
        elif not is_file:
            self.skip(entry.path, "a broken symlink" if entry.is_symlink() else "not a regular file")
        elif self._taken_from_folder(entry.path):
            try:
                status = entry.stat()
            except OSError as error:
                self.skip(entry.path, f"cannot be read ({error.strerror})")
                return
            self._take_local(entry.path, status, through_link or entry.is_symlink())
            self.read_in_folders += 1

    # -- the result ---------------------------------------------------------------------------------

    def finish(self) -> InputListing:
        """Each real file once (the name not through a link, else the first in order), zip archives opened
        into their members, every file a UTF-8 name, and the whole sorted."""
        kept: dict[tuple[int, int], str] = {}
        for uri, found in sorted(self.found.items(), key=lambda item: (item[1].through_link, item[0])):
            if found.identity is None:
                continue
            if found.identity in kept:
                self.skip(uri, f"the same file as {printable(kept[found.identity])} (a link), read once")
                del self.found[uri]
            else:
                kept[found.identity] = uri
        for uri in self.found:
            _require_utf8_name(uri)
        files: list[tuple[str, int, int]] = []
        for uri, found in sorted(self.found.items()):
            if file_name(uri).endswith(".zip"):
                files += self._zip_members(uri, found)
            else:
                files.append((uri, found.size, found.mtime_ns))
        sources = [SourceFile(uri=uri, index=index, size=size, mtime_ns=mtime)
                   for index, (uri, size, mtime) in enumerate(files)]
        if not sources:  # all named inputs were passed over (e.g. the job's own work directory)
            reasons = "; ".join(f"{skipped.uri}: {skipped.why}" for skipped in self.skipped[:5])
            raise ConfigError(f"nothing to read: {reasons}")
        return InputListing(sources, sorted(self.skipped, key=lambda skipped: skipped.uri))

    def _zip_members(self, uri: str, found: _Found) -> list[tuple[str, int, int]]:
        """A zip archive's data files, each a source of its own: read in parallel, named in every reject.

        An Amplitude export is one zip of hourly ``.json.gz`` files; as one source it would be read by one
        worker, in one piece. Nothing is extracted to disk, so a member named ``../x.json`` is read like any.
        """
        try:
            with open_seekable(uri) as handle, zipfile.ZipFile(handle) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
        except (zipfile.BadZipFile, OSError) as error:
            raise ConfigError(f"{uri}: not a readable zip archive ({error})") from None
        chosen = []
        for member in sorted(members, key=lambda m: m.filename):
            name = member.filename
            member_uri = f"{uri}{ZIP_MEMBER_SEPARATOR}{name}"
            parts = name.split("/")
            why = ignored_reason(name)
            if parts[0] == "__MACOSX" or any(p.startswith(".") and p not in (".", "..") for p in parts[:-1]):
                why = "macOS' or a hidden folder's copy"
            elif name.lower().endswith(".zip"):
                why = "a zip inside the zip: extract it, and give it as an input of its own"
            elif why is None and not self.explicit_format and detect_format(name) is None:
                why = "its ending names no format (give --format to read every file)"
            if why is not None:
                self.skip(member_uri, why)
                continue
            # The member's CRC-32 stands in for its content in the fingerprint (mtime_ns is the archive's).
            chosen.append((member_uri, member.file_size, found.mtime_ns))
            _MEMBER_CRCS[member_uri] = member.CRC
        if not chosen:
            raise ConfigError(
                f"{uri}: the zip archive holds no files of a known format; name the format with --format")
        return chosen


def _no_known_files(argument: str) -> ConfigError:
    return ConfigError(f"{argument}: the folder holds no files of a known format; name the format with --format")


def _is_job_directory(path: str) -> bool:
    """A posthog-migrate job's work directory: its lock file beside the job's own files."""
    return os.path.exists(os.path.join(path, ".lock")) and any(
        os.path.exists(os.path.join(path, name)) for name in JOB_DIRECTORY_MARKS)


def _require_utf8_name(uri: str) -> None:
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"{printable(uri)}: the file name is not valid UTF-8 (it was written in another encoding, e.g. "
            "Latin-1): rename it, e.g. with `convmv -f latin1 -t utf-8 --notest FILE`, or copy the file to a "
            "UTF-8 name"
        ) from None


# CRC-32 of each zip member seen by list_inputs, for fingerprinting without reading the member again.
_MEMBER_CRCS: dict[str, int] = {}


def _remote_glob(filesystem: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """Object stores: list below the pattern's fixed prefix, then match the whole key."""
    prefix = path
    while _GLOB_CHARS & set(prefix):
        prefix = prefix.rsplit("/", 1)[0]
    selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return [info for info in filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File and fnmatch.fnmatch(info.path, path)]


def fingerprint(source: SourceFile) -> dict:
    """What identifies an input: path, size, mtime and a hash of its first and last 64 KiB (for a zip
    member, its CRC-32)."""
    if split_member(source.uri)[1] is not None:
        crc = _MEMBER_CRCS.get(source.uri)
        return {"uri": source.uri, "size": source.size, "mtime_ns": source.mtime_ns,
                "sample_sha256": f"crc32:{crc:08x}" if crc is not None else "unknown"}
    filesystem, path = _filesystem(source.uri)
    digest = hashlib.sha256()
    with filesystem.open_input_file(path) as handle:
        digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
        if source.size > FINGERPRINT_SAMPLE_BYTES:
            handle.seek(max(source.size - FINGERPRINT_SAMPLE_BYTES, FINGERPRINT_SAMPLE_BYTES))
            digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
    return {"uri": source.uri, "size": source.size, "mtime_ns": source.mtime_ns, "sample_sha256": digest.hexdigest()}


def fingerprint_path(uri: str) -> dict:
    """The fingerprint of a file that is not a source (a lookup table the mapping names)."""
    filesystem, path = _filesystem(uri)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise ConfigError(f"{uri}: no such file")
    return fingerprint(SourceFile(uri=uri, index=-1, size=info.size or 0, mtime_ns=info.mtime_ns or 0))


# What says an input's content changed. Not mtime_ns: a bare ``touch``, a copy or a checkout changes it
# while the content, and so every event made from it, stays the same.
CONTENT_FINGERPRINT = ("size", "sample_sha256")


def describe_changes(before: list[dict], after: list[dict]) -> list[str]:
    """Human lines saying which inputs differ between two fingerprint lists (by content)."""
    old = {f["uri"]: f for f in before}
    new = {f["uri"]: f for f in after}
    lines = [f"removed: {uri}" for uri in sorted(old.keys() - new.keys())]
    lines += [f"added: {uri}" for uri in sorted(new.keys() - old.keys())]
    for uri in sorted(old.keys() & new.keys()):
        changed = [key for key in CONTENT_FINGERPRINT if old[uri][key] != new[uri][key]]
        if changed:
            lines.append(f"changed ({', '.join(changed)}): {uri}")
    return lines


def joined_listings(listings: list[InputListing]) -> InputListing:
    """Several listings as one, sorted by URI and numbered anew (a file's index is its place in the job)."""
    if not listings:
        raise ConfigError("nothing to read")
    sources = sorted((source for listing in listings for source in listing.sources), key=lambda source: source.uri)
    skipped = sorted((item for listing in listings for item in listing.skipped), key=lambda item: item.uri)
    return InputListing([replace(source, index=index) for index, source in enumerate(sources)], skipped)
