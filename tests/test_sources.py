"""Finding the input files: files, folders, globs; their stable order; fingerprints of their content.

A file's index in the sorted list is part of every event's sort key, so the same arguments must always
give the same list in the same order; a fingerprint must notice an input rewritten in place.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from posthog_migrate.adapters.base import SourceFile
from posthog_migrate.errors import ConfigError
from posthog_migrate.sources import (
    FINGERPRINT_SAMPLE_BYTES,
    describe_changes,
    expand_sources,
    fingerprint,
)


def touch(path: Path, data: bytes = b"x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def uris(sources: list[SourceFile], root: Path) -> list[str]:
    return [str(Path(s.uri).relative_to(root)) for s in sources]


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A folder as export tools leave it: data files plus markers, checksums and hidden files."""
    root = tmp_path / "export"
    for name in ("b.csv", "a.jsonl.gz", "sub/deeper/c.parquet", "sub/d.ndjson", "z.TSV"):
        touch(root / name)
    for name in ("_SUCCESS", "_manifest", ".DS_Store", ".hidden.csv", ".part-0000.csv.crc", "part-0000.crc",
                 "sums.md5", "x.json.manifest", "notes.txt", "README", "sub/_SUCCESS",
                 ".ipynb_checkpoints/b-checkpoint.csv", "_temporary/0/part-0001.csv", ".git/x.json"):
        touch(root / name)
    return root


def test_folder_expands_recursively_to_files_with_known_endings_only(export):
    sources = expand_sources([str(export)], explicit_format=False)
    assert uris(sources, export) == ["a.jsonl.gz", "b.csv", "sub/d.ndjson", "sub/deeper/c.parquet", "z.TSV"]


def test_folder_with_explicit_format_takes_all_visible_files(export):
    sources = expand_sources([str(export)], explicit_format=True)
    assert uris(sources, export) == [
        "README", "a.jsonl.gz", "b.csv", "notes.txt", "sub/d.ndjson", "sub/deeper/c.parquet", "z.TSV"]


def test_files_in_hidden_or_underscore_sub_folders_are_ignored(export):
    taken = {Path(s.uri).relative_to(export).parts[0] for s in expand_sources([str(export)], explicit_format=True)}
    assert not taken & {".ipynb_checkpoints", "_temporary", ".git"}


def test_a_hidden_folder_named_directly_is_still_read(tmp_path):
    touch(tmp_path / ".cache" / "e.csv")
    assert uris(expand_sources([str(tmp_path / ".cache")], explicit_format=False), tmp_path) == [".cache/e.csv"]


def test_sources_are_sorted_indexed_and_deduplicated(export, monkeypatch):
    monkeypatch.chdir(export)
    sources = expand_sources(["sub", "b.csv", str(export / "a.jsonl.gz"), "./b.csv", str(export / "sub")],
                             explicit_format=False)
    assert uris(sources, export) == ["a.jsonl.gz", "b.csv", "sub/d.ndjson", "sub/deeper/c.parquet"]
    assert [s.index for s in sources] == [0, 1, 2, 3]
    assert all(os.path.isabs(s.uri) for s in sources)


def test_source_file_carries_size_and_mtime(tmp_path):
    path = touch(tmp_path / "e.csv", b"event\na\n")
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    [source] = expand_sources([str(path)], explicit_format=False)
    assert (source.uri, source.index, source.size, source.mtime_ns) == (str(path), 0, 8, 1_700_000_000_000_000_000)
    assert source.name == source.uri


def test_a_file_named_directly_is_taken_whatever_its_name(tmp_path):
    path = touch(tmp_path / "_SUCCESS")
    assert [s.uri for s in expand_sources([str(path)], explicit_format=False)] == [str(path)]


def test_globs_match_files_in_sorted_order(export):
    sources = expand_sources([str(export / "*.csv"), str(export / "sub" / "**" / "*.parquet")], explicit_format=False)
    assert uris(sources, export) == ["b.csv", "sub/deeper/c.parquet"]
    recursive = expand_sources([str(export / "**" / "*json*")], explicit_format=False)
    # a glob skips what export tools leave beside the data (here a manifest), like a folder does
    assert uris(recursive, export) == ["a.jsonl.gz", "sub/d.ndjson"]
    assert [s.index for s in recursive] == [0, 1]


def test_glob_with_character_class_and_question_mark(tmp_path):
    for name in ("day1.csv", "day2.csv", "day3.csv", "day10.csv"):
        touch(tmp_path / name)
    assert uris(expand_sources([str(tmp_path / "day[12].csv")], False), tmp_path) == ["day1.csv", "day2.csv"]
    assert uris(expand_sources([str(tmp_path / "day?.csv")], False), tmp_path) == [
        "day1.csv", "day2.csv", "day3.csv"]


def test_glob_skips_folders(tmp_path):
    touch(tmp_path / "a.csv")
    (tmp_path / "folder.csv").mkdir()
    assert uris(expand_sources([str(tmp_path / "*.csv")], False), tmp_path) == ["a.csv"]


def test_missing_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file or folder"):
        expand_sources([str(tmp_path / "nope.csv")], explicit_format=False)


def test_glob_matching_nothing_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="matches no files"):
        expand_sources([str(tmp_path / "*.csv")], explicit_format=False)


def test_folder_without_known_files_is_a_config_error_suggesting_format(tmp_path):
    touch(tmp_path / "data" / "part-0000")
    touch(tmp_path / "data" / "_SUCCESS")
    with pytest.raises(ConfigError, match="--format"):
        expand_sources([str(tmp_path / "data")], explicit_format=False)
    [source] = expand_sources([str(tmp_path / "data")], explicit_format=True)
    assert source.uri.endswith("part-0000")


def test_empty_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        expand_sources([str(tmp_path)], explicit_format=True)


def test_unknown_uri_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot open"):
        expand_sources(["nosuchscheme://bucket/key.csv"], explicit_format=False)


# --- fingerprints ------------------------------------------------------------------------------------

def source_of(path: Path) -> SourceFile:
    [source] = expand_sources([str(path)], explicit_format=True)
    return source


def test_fingerprint_is_stable_for_an_unchanged_file(tmp_path):
    path = touch(tmp_path / "e.csv", b"event\na\n")
    first = fingerprint(source_of(path))
    assert first == fingerprint(source_of(path))
    assert set(first) == {"uri", "size", "mtime_ns", "sample_sha256"}
    assert describe_changes([first], [fingerprint(source_of(path))]) == []


def test_fingerprint_changes_when_content_changes_with_the_same_size_and_mtime(tmp_path):
    path = touch(tmp_path / "e.csv", b"event\na\n")
    stamp = (1_700_000_000_000_000_000, 1_700_000_000_000_000_000)
    os.utime(path, ns=stamp)
    before = fingerprint(source_of(path))
    path.write_bytes(b"event\nb\n")
    os.utime(path, ns=stamp)
    after = fingerprint(source_of(path))
    assert (before["size"], before["mtime_ns"]) == (after["size"], after["mtime_ns"])
    assert before["sample_sha256"] != after["sample_sha256"]
    assert describe_changes([before], [after]) == [f"changed (sample_sha256): {path}"]


@pytest.mark.parametrize("where", ["head", "tail"])
def test_fingerprint_of_a_large_file_samples_both_ends(tmp_path, where):
    size = 3 * FINGERPRINT_SAMPLE_BYTES + 17
    data = bytearray(b"a" * size)
    path = touch(tmp_path / "big.csv", bytes(data))
    stamp = (1_700_000_000_000_000_000, 1_700_000_000_000_000_000)
    os.utime(path, ns=stamp)
    before = fingerprint(source_of(path))
    data[10 if where == "head" else size - 10] = ord("b")
    path.write_bytes(bytes(data))
    os.utime(path, ns=stamp)
    assert fingerprint(source_of(path))["sample_sha256"] != before["sample_sha256"]


def test_fingerprint_of_a_file_between_one_and_two_samples_long(tmp_path):
    size = FINGERPRINT_SAMPLE_BYTES + 100
    data = bytearray(b"a" * size)
    path = touch(tmp_path / "mid.csv", bytes(data))
    before = fingerprint(source_of(path))
    data[-1] = ord("b")
    path.write_bytes(bytes(data))
    assert fingerprint(source_of(path))["sample_sha256"] != before["sample_sha256"]


def test_describe_changes_lists_removed_added_and_changed_inputs():
    def fp(uri: str, size: int = 1, mtime: int = 1, sha: str = "s") -> dict:
        return {"uri": uri, "size": size, "mtime_ns": mtime, "sample_sha256": sha}

    before = [fp("/a"), fp("/b"), fp("/c"), fp("/d")]
    after = [fp("/b", size=2), fp("/c", mtime=2, sha="t"), fp("/d"), fp("/e")]
    assert describe_changes(before, after) == [
        "removed: /a",
        "added: /e",
        "changed (size): /b",
        "changed (sample_sha256): /c",
    ]
