"""Finding the input files: paths, folders, globs and ``s3://`` URIs, in a stable order.

The order matters: a file's index in the sorted list is part of every event's sort key (the tie-breaker
after the timestamp), so the same inputs always produce the same event order and the same batches.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import zipfile
from collections.abc import Iterable
from urllib.parse import urlsplit

from pyarrow import fs as pafs

from adapters import detect_format
from adapters.base import ZIP_MEMBER_SEPARATOR, SourceFile, file_name, filesystem_for, open_seekable, split_member
from migrate.errors import ConfigError

# Files that export tools leave beside the data and that are never rows.
IGNORED_NAMES = ("_SUCCESS", "_manifest", ".DS_Store")
IGNORED_PREFIXES = (".", "_")
IGNORED_ENDINGS = (".crc", ".md5", ".json.manifest")
# A fingerprint reads this much from each end of a file: cheap, and catches rewritten exports of equal size.
FINGERPRINT_SAMPLE_BYTES = 64 * 1024
_GLOB_CHARS = set("*?[")


def _is_ignored(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base in IGNORED_NAMES or base.startswith(IGNORED_PREFIXES) or base.endswith(IGNORED_ENDINGS)


def _is_ignored_below(folder: str, path: str) -> bool:
    """Ignored file, or a file inside a hidden/underscore sub-folder of ``folder`` (``.git``,
    ``.ipynb_checkpoints`` copies, Spark's in-progress ``_temporary``)."""
    relative = path[len(folder):].strip("/") if path.startswith(folder) else path.rsplit("/", 1)[-1]
    return _is_ignored(path) or any(part.startswith(IGNORED_PREFIXES) for part in relative.split("/")[:-1])


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
    """Every input file named by the command line, sorted by URI, each once.

    Folders are walked recursively. Without ``--format``, only files whose ending names a format are
    taken from folders; with it, every visible file is.
    """
    found: dict[str, pafs.FileInfo] = {}
    for argument in arguments:
        filesystem, path = _filesystem(argument)
        if _is_pattern(argument):
            infos = _glob(filesystem, argument, path)
            if not infos:
                raise ConfigError(f"{argument}: the pattern matches no files")
        else:
            info = filesystem.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise ConfigError(f"{argument}: no such file or folder")
            if info.type == pafs.FileType.Directory:
                infos = [
                    i for i in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
                    if i.type == pafs.FileType.File and not _is_ignored_below(path, i.path)
                    and (explicit_format or detect_format(i.path) is not None)
                ]
                if not infos:
                    raise ConfigError(
                        f"{argument}: the folder holds no files of a known format; name the format with --format"
                    )
            else:
                infos = [info]
        for info in infos:
            found[_to_uri(argument, info.path)] = info
    files: list[tuple[str, int, int]] = []
    for uri, info in sorted(found.items()):
        if file_name(uri).endswith(".zip"):
            files += _zip_members(uri, info, explicit_format)
        else:
            files.append((uri, info.size or 0, info.mtime_ns or 0))
    return [SourceFile(uri=uri, index=index, size=size, mtime_ns=mtime)
            for index, (uri, size, mtime) in enumerate(files)]


def _zip_members(uri: str, info: pafs.FileInfo, explicit_format: bool) -> list[tuple[str, int, int]]:
    """A zip archive's data files, each a source of its own: read in parallel, named in every reject.

    An Amplitude export is one zip of hourly ``.json.gz`` files; as one source it would be read by one
    worker, in one piece.
    """
    try:
        with open_seekable(uri) as handle, zipfile.ZipFile(handle) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError) as error:
        raise ConfigError(f"{uri}: not a readable zip archive ({error})") from None
    chosen = []
    for member in sorted(members, key=lambda m: m.filename):
        name = member.filename
        if _is_ignored(name) or name.startswith("__MACOSX/") or "/." in f"/{name}":
            continue
        if not explicit_format and detect_format(name) is None:
            continue
        # The member's CRC-32 stands in for its content in the fingerprint (mtime_ns is the archive's).
        chosen.append((f"{uri}{ZIP_MEMBER_SEPARATOR}{name}", member.file_size, info.mtime_ns or 0))
        _MEMBER_CRCS[f"{uri}{ZIP_MEMBER_SEPARATOR}{name}"] = member.CRC
    if not chosen:
        raise ConfigError(f"{uri}: the zip archive holds no files of a known format; name the format with --format")
    return chosen


# CRC-32 of each zip member seen by expand_sources, for fingerprinting without reading the member again.
_MEMBER_CRCS: dict[str, int] = {}


def _glob(filesystem: pafs.FileSystem, argument: str, path: str) -> list[pafs.FileInfo]:
    if isinstance(filesystem, pafs.LocalFileSystem):
        matches = sorted(glob.glob(path, recursive=True))
        infos = filesystem.get_file_info(matches)
        return [i for i in infos if i.type == pafs.FileType.File and not _is_ignored(i.path)]
    # Object stores: list below the pattern's fixed prefix, then match the whole key.
    prefix = path
    while _GLOB_CHARS & set(prefix):
        prefix = prefix.rsplit("/", 1)[0]
    selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return [
        i for i in filesystem.get_file_info(selector)
        if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path) and not _is_ignored(i.path)
    ]


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
