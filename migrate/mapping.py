"""Which source columns make which parts of a PostHog event: the column mapping.

A mapping comes from a TOML file (``--mapping``) and command-line options for the common cases; with
neither, the obvious column names (``event``, ``distinct_id``, ``timestamp``, ``properties``, ``uuid``)
work on their own. The file, with every key optional::

    [columns]
    event = "action"                  # or: event_name = "Order Completed" (one name for every row)
    distinct_id = ["user_id", "anonymous_id"]   # first non-empty wins
    timestamp = "ts"
    timestamp_unit = "ms"             # auto | s | ms | us | ns | iso
    timezone = "Europe/Berlin"        # for timestamps without an offset (default UTC)
    uuid = "event_uuid"               # a real UUID column, kept as is
    insert_id = "insert_id"           # any unique id, turned into a UUIDv5

    [properties]
    json_column = "props"             # a column holding a JSON object of properties
    include = ["plan", "page"]        # default: every column not used above
    exclude = ["internal_note"]

    [person]
    set = ["email", "name"]           # → properties.$set
    set_once = ["signup_date"]        # → properties.$set_once
    mode = "set"                      # set | set_once | skip: what historical $sets do to persons (see PERSON_MODES)

    [profiles]                        # the rows are persons, not events: one $set event each
    distinct_id = "user_id"
    set = ["email", "plan"]           # default: every column not named here
    set_once = ["signup_date"]
    timestamp = "updated_at"          # a row without one is placed after the job's last event

    [group_profiles]                  # the rows are groups: one $groupidentify each
    group_type = "company"
    group_key = "company_id"
    set = ["name", "tier"]            # default: every column not named here
    timestamp = "updated_at"

    [groups]
    company = "company_id"            # → properties.$groups = {"company": <company_id>}

    [source]
    group_type = "company"            # settings of a platform adapter (see its module)

    [transform]                       # applied to every event, whatever the format
    rename_events = { "Signed Up" = "signed_up" }
    drop_properties = ["internal_id"]
    rename_properties = { "plan_name" = "plan" }
    drop_group_types = ["team"]       # from $groups; their $groupidentify events are filtered

    [filter]
    drop_events = ["session_start"]   # counted as filtered in the summary, never silently
    since = "2023-01-01"              # keep events at or after this time
    until = "2024-01-01"              # keep events before this time
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from posthog_migrate.distinct_ids import PassedOver, is_illegal_id, no_usable_id
from posthog_migrate.errors import ConfigError, describe_unknown_keys, refuse_unknown_keys
from posthog_migrate.event import (
    TIMESTAMP_UNITS,
    Event,
    Rejection,
    json_object,
    normalise_uuid,
    number_id_text,
    parse_timestamp,
    uuid_from_content,
    uuid_from_id,
)
from posthog_migrate.profiles import group_profile_event, person_profile_event, profile_uuid

# Column names recognised with no mapping at all, in order of preference.
DEFAULT_EVENT_COLUMNS = ("event", "event_name", "event_type")
DEFAULT_DISTINCT_ID_COLUMNS = ("distinct_id", "user_id", "userId", "anonymous_id", "anonymousId", "device_id")
DEFAULT_TIMESTAMP_COLUMNS = ("timestamp", "time", "event_time", "ts", "created_at")
DEFAULT_UUID_COLUMNS = ("uuid",)
DEFAULT_INSERT_ID_COLUMNS = ("insert_id", "$insert_id", "message_id", "messageId", "event_id")
DEFAULT_PROPERTIES_COLUMNS = ("properties",)

# The source tag inside content-derived uuids of generic files: the same rows give the same uuids
# whether they come as CSV, JSON lines or Parquet.
GENERIC_SOURCE_TAG = "generic"

# The keys of each table of a mapping file. A key not listed is refused (a typo must not be ignored); the
# keys of [groups] are group types, those of [source] the adapter's settings and those of [run] the
# settings of posthog_migrate.config, each checked there.
MAPPING_TABLE_KEYS = {
    "columns": ("event", "event_name", "distinct_id", "timestamp", "timestamp_unit", "timezone", "uuid", "insert_id"),
    "properties": ("json_column", "include", "exclude"),
    "person": ("set", "set_once", "mode"),
    "profiles": ("distinct_id", "set", "set_once", "timestamp"),
    "group_profiles": ("group_type", "group_key", "set", "timestamp"),
    "filter": ("drop_events", "since", "until"),
    "transform": ("rename_events", "drop_properties", "rename_properties", "drop_group_types"),
    "groups": None,
    "source": None,
    "run": None,
}
# How messages name the mapping the Python API was given as a dict (``mapping={"columns": {...}}``).
MAPPING_ARGUMENT = "the mapping= argument"
# ColumnMapping fields a job prepared before they existed does not record (see ColumnMapping.to_dict).
_ADDED_SETTINGS = frozenset({"person_mode", "drop_group_types", "profiles", "group_profiles"})
# [person] mode: what the historical $set and $set_once of every event do to PostHog's persons.
#   set       as the source says: $set overwrites, in time order (a new project)
#   set_once  every $set becomes a $set_once: fills what a person lacks, never overwrites (a project with live data)
#   skip      no person properties at all; $set events (profiles) are filtered
PERSON_MODES = ("set", "set_once", "skip")


class Filtered(Exception):
    """A row dropped on purpose by a rule the user set; ``rule`` names it in the summary."""

    def __init__(self, rule: str):
        super().__init__(rule)
        self.rule = rule


def parse_bound(value: str, zone: ZoneInfo) -> int:
    """A since/until bound: a date or ISO time first ("20230101" is a date here, not epoch seconds)."""
    try:
        return parse_timestamp(value, "iso", zone)
    except Rejection:
        return parse_timestamp(value, "auto", zone)


def _pairs(value: Any, setting: str = "renames") -> tuple[tuple[str, str], ...]:
    """A TOML table {old = "new"} (or CLI "OLD=NEW" strings) as sorted (old, new) pairs.

    ``setting`` names where the value came from (``mapping file m.toml: [transform] rename_events`` or
    ``--rename-event``), for the message when it is neither.
    """
    if value is None or (isinstance(value, dict | list | tuple | str) and not value):
        return ()
    if isinstance(value, dict):
        for old, new in value.items():
            if not isinstance(new, str) or not new or not old:
                raise ConfigError(
                    f"{setting}: {old!r} = {new!r}: the new name must be a non-empty text in quotes, "
                    f'e.g. {{ "Signed Up" = "signed_up" }}'
                )
        return tuple(sorted((str(k), v) for k, v in value.items()))
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(
            f'{setting} = {value!r} must be a table of renames, e.g. {{ "Signed Up" = "signed_up" }}, '
            'or a list of "OLD=NEW" texts'
        )
    pairs = []
    for item in items:
        old, sep, new = item.partition("=") if isinstance(item, str) else ("", "", "")
        if not sep or not old or not new:
            raise ConfigError(
                f'{setting}: {item!r} is not a rename; write renames as "OLD=NEW", '
                f'or as a table: {{ "Signed Up" = "signed_up" }}'
            )
        pairs.append((old, new))
    return tuple(sorted(pairs))


def _as_list(value: Any, setting: str = "names") -> tuple[str, ...]:
    """One name or a list of names as a tuple; ``setting`` names where the value came from, for the
    message when it is neither."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if setting.startswith("--"):
        raise ConfigError(f"{setting} {value!r} must be a name; repeat the option to give several")
    key = setting.rsplit(" ", 1)[-1]
    raise ConfigError(
        f'{setting} = {value!r} must be a name in quotes or a list of names in quotes, e.g. {key} = "a" or '
        f'{key} = ["a", "b"]'
    )


def _as_text(value: Any, setting: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"{setting} = {value!r} must be a text in quotes")


def _profile_table(table: dict, where: str, columns: tuple[str, ...], texts: tuple[str, ...] = ()) -> tuple:
    """A [profiles] or [group_profiles] table as sorted (key, value) pairs: ``columns`` name columns (a name or a
    list of names), ``texts`` are plain texts. Its keys were checked by from_toml."""
    pairs = []
    for key, value in table.items():
        if key in texts:
            pairs.append((key, _as_text(value, f"{where} {key}")))
        elif key in columns:
            pairs.append((key, _as_list(value, f"{where} {key}")))
    return tuple(sorted(pairs))


def _as_bound(value: Any, setting: str) -> str | None:
    """A since/until bound as written: a text, a TOML date or date-time, or a number (epoch)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float | date):  # datetime is a date
        raise ConfigError(f'{setting} = {value!r} must be a date or time, e.g. {setting.rsplit(" ", 1)[-1]} = '
                          '"2023-01-01"')
    return str(value)


# What the command-line options of ColumnMapping.override are called, for messages.
_OPTION_NAMES = {
    "event": "--event-column", "event_name": "--event-name", "distinct_id": "--distinct-id-column",
    "timestamp": "--timestamp-column", "timestamp_unit": "--timestamp-unit", "timezone": "--source-timezone",
    "uuid": "--uuid-column", "insert_id": "--insert-id-column", "properties_json": "--properties-column",
    "rename_events": "--rename-event", "drop_events": "--drop-event", "rename_properties": "--rename-property",
    "drop_properties": "--drop-property", "person_mode": "--person-properties",
}


@dataclass(frozen=True)
class ColumnMapping:
    """Where each part of an event comes from. Empty tuples mean "use the default column names"."""

    event: tuple[str, ...] = ()
    event_name: str | None = None
    distinct_id: tuple[str, ...] = ()
    timestamp: tuple[str, ...] = ()
    timestamp_unit: str = "auto"
    timezone: str = "UTC"
    uuid: tuple[str, ...] = ()
    insert_id: tuple[str, ...] = ()
    properties_json: tuple[str, ...] = ()
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    set: tuple[str, ...] = ()
    set_once: tuple[str, ...] = ()
    groups: tuple[tuple[str, str], ...] = ()
    drop_events: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    rename_events: tuple[tuple[str, str], ...] = ()
    drop_properties: tuple[str, ...] = ()
    rename_properties: tuple[tuple[str, str], ...] = ()
    person_mode: str = "set"
    drop_group_types: tuple[str, ...] = ()
    # The [profiles] and [group_profiles] tables, as given (keys checked by from_toml): the rows are profiles.
    profiles: tuple[tuple[str, Any], ...] = ()
    group_profiles: tuple[tuple[str, Any], ...] = ()
    # The [source] table: settings of a platform adapter (e.g. Segment's group_type), as given.
    source_options: tuple[tuple[str, Any], ...] = ()
    # The mapping file's folder: relative paths in [source] (lookup files) are read from there.
    base_dir: str | None = None
    explicit: frozenset[str] = field(default_factory=frozenset)

    def source_option(self, name: str, default: Any = None) -> Any:
        return dict(self.source_options).get(name, default)

    def check_source_options(self, format_name: str, known: tuple[str, ...]) -> None:
        """The [source] table holds the settings of the format's adapter: a key it does not read is a typo or a
        setting of another format, and must not be ignored silently (the migration would run without it)."""
        unknown = [str(key) for key, _ in self.source_options if key not in known]
        if unknown:
            raise ConfigError(
                f"the mapping's [source] table has {describe_unknown_keys(unknown, list(known))}, which the "
                f"{format_name} format does not know; "
                + (f"it knows: {', '.join(known)}" if known else "it takes no settings")
            )

    def source_path(self, name: str) -> Any:
        """A [source] setting naming a file, relative to the mapping file's folder when it is relative."""
        value = self.source_option(name)
        if isinstance(value, str) and value.strip() and "://" not in value and self.base_dir:
            return str(Path(self.base_dir) / value) if not Path(value).is_absolute() else value
        return value

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, path: str | Path) -> ColumnMapping:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"mapping file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"mapping file {path} is not valid TOML: {error}") from None
        return cls.from_tables(document, f"mapping file {path}", base_dir=str(Path(path).resolve().parent))

    @classmethod
    def from_tables(cls, document: dict, where: str, base_dir: str | None = None) -> ColumnMapping:
        """The mapping of a mapping file's tables (``{"columns": {...}, "filter": {...}}``), checked as the file's
        are; ``where`` names them in messages (the file, or the Python API's mapping= argument), and relative
        paths in ``[source]`` are read from ``base_dir`` (None: the current folder)."""
        if not isinstance(document, dict):
            raise ConfigError(f"{where} must be a dict of the mapping file's tables, e.g. "
                              '{"columns": {"event": "action"}}; got ' + type(document).__name__)
        known = sorted(MAPPING_TABLE_KEYS)
        unknown = [str(section) for section in document if section not in MAPPING_TABLE_KEYS]
        if unknown:
            raise ConfigError(
                f"{where}: unknown section(s) {describe_unknown_keys(unknown, known)}; "
                f"the sections are: {', '.join(f'[{section}]' for section in known)}"
            )
        for section, keys in MAPPING_TABLE_KEYS.items():
            if not isinstance(document.get(section, {}), dict):
                raise ConfigError(
                    f"{where}: {section} = {document[section]!r} must be a table: write its keys under a "
                    f"[{section}] line"
                )
            if keys is not None:
                refuse_unknown_keys(document.get(section, {}), list(keys), f"{where}: [{section}]")
        columns = document.get("columns", {})
        props = document.get("properties", {})
        person = document.get("person", {})
        groups = document.get("groups", {})
        rules = document.get("filter", {})
        transform = document.get("transform", {})

        def names(section: str, table: dict, key: str) -> tuple[str, ...]:
            return _as_list(table.get(key), f"{where}: [{section}] {key}")

        for group_type, column in groups.items():
            if not isinstance(column, str) or not column:
                raise ConfigError(
                    f"{where}: [groups] {group_type} = {column!r} must be the name of the column holding the "
                    f'group key, in quotes, e.g. {group_type} = "{group_type}_id"'
                )
        values: dict[str, Any] = {
            "event": names("columns", columns, "event"),
            "event_name": _as_text(columns.get("event_name"), f"{where}: [columns] event_name"),
            "distinct_id": names("columns", columns, "distinct_id"),
            "timestamp": names("columns", columns, "timestamp"),
            "timestamp_unit": columns.get("timestamp_unit", "auto"),  # checked by validated(), with the choices
            "timezone": columns.get("timezone", "UTC"),
            "uuid": names("columns", columns, "uuid"),
            "insert_id": names("columns", columns, "insert_id"),
            "properties_json": names("properties", props, "json_column"),
            "include": names("properties", props, "include") if "include" in props else None,
            "exclude": names("properties", props, "exclude"),
            "set": names("person", person, "set"),
            "set_once": names("person", person, "set_once"),
            "groups": tuple((str(k), v) for k, v in groups.items()),
            "drop_events": names("filter", rules, "drop_events"),
            "since": _as_bound(rules.get("since"), f"{where}: [filter] since"),
            "until": _as_bound(rules.get("until"), f"{where}: [filter] until"),
            "source_options": tuple(sorted((str(k), v) for k, v in document.get("source", {}).items())),
            "rename_events": _pairs(transform.get("rename_events"), f"{where}: [transform] rename_events"),
            "drop_properties": names("transform", transform, "drop_properties"),
            "rename_properties": _pairs(transform.get("rename_properties"), f"{where}: [transform] rename_properties"),
            "person_mode": _as_text(person.get("mode"), f"{where}: [person] mode") or "set",
            "drop_group_types": names("transform", transform, "drop_group_types"),
            "profiles": _profile_table(document.get("profiles", {}), f"{where}: [profiles]",
                                       ("distinct_id", "set", "set_once", "timestamp")),
            "group_profiles": _profile_table(document.get("group_profiles", {}), f"{where}: [group_profiles]",
                                             ("group_key", "set", "timestamp"), texts=("group_type",)),
        }
        mapping = cls(**values, base_dir=base_dir)
        return mapping.with_explicit({k for k, v in values.items() if v not in ((), None)} - {"person_mode"})

    def with_explicit(self, names: Iterable[str]) -> ColumnMapping:
        return replace(self, explicit=self.explicit | frozenset(names))

    def override(self, **options: Any) -> ColumnMapping:
        """Command-line options win over the file; ``None`` or empty means "not given"."""
        given = {k: v for k, v in options.items() if v not in (None, (), [])}
        for key in ("event", "distinct_id", "timestamp", "uuid", "insert_id", "properties_json", "drop_properties"):
            if key in given:
                given[key] = _as_list(given[key], _OPTION_NAMES[key])
        if "event_name" in given:
            _as_text(given["event_name"], _OPTION_NAMES["event_name"])
        for key in ("rename_events", "rename_properties"):
            if key in given:
                renames = _pairs(given[key], _OPTION_NAMES[key])
                given[key] = tuple(sorted({**dict(getattr(self, key)), **dict(renames)}.items()))
        if "drop_events" in given:
            given["drop_events"] = tuple(sorted({*self.drop_events, *_as_list(given["drop_events"], "--drop-event")}))
        return replace(self, **given).with_explicit(given)

    def validated(self) -> ColumnMapping:
        """Check the settings that do not depend on the data; raise ConfigError with the fix."""
        if self.timestamp_unit not in TIMESTAMP_UNITS:
            raise ConfigError(
                f"timestamp unit {self.timestamp_unit!r} is not one of {', '.join(TIMESTAMP_UNITS)}"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigError(
                f"unknown timezone {self.timezone!r}: use an IANA name such as 'UTC' or 'America/New_York'"
            ) from None
        if self.person_mode not in PERSON_MODES:
            raise ConfigError(f"[person] mode = {self.person_mode!r}: choose one of {', '.join(PERSON_MODES)} (set: as "
                              "the source says; set_once: never overwrite a person's properties; skip: send none)")
        if self.profiles and self.group_profiles:
            raise ConfigError("the mapping has both [profiles] and [group_profiles]: the rows of a job are persons or "
                              "groups; migrate each as a job of its own")
        if self.profiles and not dict(self.profiles).get("distinct_id"):
            raise ConfigError("[profiles] needs distinct_id, the column of each person's id, e.g. "
                              'distinct_id = "user_id"')
        if self.group_profiles:
            table = dict(self.group_profiles)
            if not table.get("group_type") or not table.get("group_key"):
                raise ConfigError('[group_profiles] needs group_type (e.g. "company") and group_key (the column of '
                                  'each group\'s key, e.g. "company_id")')
        for bound in ("since", "until"):
            value = getattr(self, bound)
            if value is not None:
                try:
                    parse_bound(value, ZoneInfo(self.timezone))
                except Rejection:
                    raise ConfigError(f"filter {bound} = {value!r} is not a date or timestamp") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        """A canonical form, fingerprinted so a resume can tell that the mapping changed. Settings added since the
        first release are left out at their default, so that a job prepared before they existed still resumes."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _ADDED_SETTINGS and value == f.default:
                continue
            out[f.name] = sorted(value) if isinstance(value, frozenset) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnMapping:
        """The inverse of :meth:`to_dict` (as read back from a job's manifest)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name)
            if f.name == "explicit":
                value = frozenset(value or ())
            elif f.name == "groups":
                value = tuple((str(t), str(c)) for t, c in value or ())
            elif f.name in ("source_options", "rename_events", "rename_properties"):
                value = tuple((str(k), v) for k, v in value or ())
            elif f.name in ("profiles", "group_profiles"):
                value = tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in value or ())
            elif isinstance(value, list):
                value = tuple(value)
            if value is not None or f.name in ("event_name", "include", "since", "until", "base_dir"):
                values[f.name] = value
        return cls(**values)

    # -- checking against the data -----------------------------------------------------------

    def check_columns(self, available: Iterable[str], where: str) -> None:
        """Fail early when an explicitly mapped column is not in the source."""
        present = set(available)
        roles = {
            "event": self.event, "distinct_id": self.distinct_id, "timestamp": self.timestamp,
            "uuid": self.uuid, "insert_id": self.insert_id, "properties_json": self.properties_json,
        }
        problems = []
        for role, names in roles.items():
            if role in self.explicit and names and not present.intersection(names):
                problems.append(f"{role} → {' or '.join(names)}")
        for role, names in (("set", self.set), ("set_once", self.set_once), ("include", self.include or ())):
            missing = [n for n in names if n not in present]
            if role in self.explicit and missing:
                problems.append(f"{role} → {', '.join(missing)}")
        missing_groups = [f"{t} → {c}" for t, c in self.groups if c not in present]
        if missing_groups:
            problems.append(f"groups {', '.join(missing_groups)}")
        for table, pairs in (("profiles", self.profiles), ("group_profiles", self.group_profiles)):
            for key, names in pairs:
                if isinstance(names, tuple | list) and (key in ("set", "set_once") or not present.intersection(names)):
                    missing = [n for n in names if n not in present]
                    if missing:
                        problems.append(f"[{table}] {key} → {', '.join(missing)}")
        if problems:
            shown = ", ".join(sorted(present)[:30]) + (" …" if len(present) > 30 else "")
            raise ConfigError(
                f"{where}: the mapping names column(s) the file does not have: {'; '.join(problems)}. "
                f"Columns found: {shown}. Fix the mapping file or the --*-column options."
            )
        if self.profiles or self.group_profiles:
            return  # the rows are profiles: no event name
        if self.event_name is None and not present.intersection(self.event or DEFAULT_EVENT_COLUMNS):
            raise ConfigError(
                f"{where}: no event-name column found (looked for {', '.join(DEFAULT_EVENT_COLUMNS)}). "
                f"Columns found: {', '.join(sorted(present)[:30])}. Name it with --event-column, or give "
                "every row one name with --event-name. Is --format right for this file?"
            )


class RowMapper:
    """Turns one source record (column → value) into a PostHog event, following a ColumnMapping."""

    def __init__(self, mapping: ColumnMapping, source_tag: str = GENERIC_SOURCE_TAG):
        self.mapping = mapping.validated()
        self.source_tag = source_tag
        self.zone = ZoneInfo(mapping.timezone)
        self.event_columns = mapping.event or DEFAULT_EVENT_COLUMNS
        self.distinct_id_columns = mapping.distinct_id or DEFAULT_DISTINCT_ID_COLUMNS
        self.timestamp_columns = mapping.timestamp or DEFAULT_TIMESTAMP_COLUMNS
        self.uuid_columns = mapping.uuid or DEFAULT_UUID_COLUMNS
        self.insert_id_columns = mapping.insert_id or DEFAULT_INSERT_ID_COLUMNS
        self.json_columns = mapping.properties_json or DEFAULT_PROPERTIES_COLUMNS
        self.drop_events = frozenset(mapping.drop_events)
        self.since_us = parse_bound(mapping.since, self.zone) if mapping.since else None
        self.until_us = parse_bound(mapping.until, self.zone) if mapping.until else None
        self.has_person_or_groups = bool(mapping.set or mapping.set_once or mapping.groups)
        # Columns that feed $set, $set_once or $groups, or that the user excluded, are never plain properties.
        self.always_consumed = frozenset(
            (*mapping.set, *mapping.set_once, *(column for _, column in mapping.groups), *mapping.exclude)
        )
        self.profiles = dict(mapping.profiles)
        self.group_profiles = dict(mapping.group_profiles)

    @staticmethod
    def _first(record: dict, columns: tuple[str, ...]) -> tuple[str | None, Any]:
        """The first of ``columns`` with a non-empty value, and that value."""
        for column in columns:
            value = record.get(column)
            if value is not None and value != "":
                return column, value
        return None, None

    def _properties(self, record: dict, used: set[str | None]) -> dict:
        properties: dict = {}
        column, raw = self._first(record, self.json_columns)
        used.add(column)
        if raw is not None:
            properties.update(json_object(raw, f"column {column!r}"))
        include = self.mapping.include
        for name, value in record.items():
            if value is None or name in used or (include is not None and name not in include):
                continue
            properties[name] = value
        return properties

    @staticmethod
    def _distinct_id_text(value: Any) -> str | None:
        """An id as trimmed text (numbers too); None when missing or blank."""
        if value is None or value == "":
            return None
        if type(value) is str:
            return value.strip() or None
        if isinstance(value, bool | dict | list):
            raise Rejection("missing_distinct_id", f"distinct_id {value!r} is not text or a number")
        if isinstance(value, int | float | Decimal):
            return number_id_text(value, "distinct_id")
        return str(value).strip() or None

    def _distinct_id(self, record: dict, columns: tuple[str, ...]) -> tuple[str | None, str | None, PassedOver]:
        """(column, id) of the first of ``columns`` holding an id PostHog merges through, and the ids passed over
        on the way because it would not ("null", "0"...: see posthog_migrate.distinct_ids)."""
        passed: PassedOver = ()
        for column in columns:
            text = self._distinct_id_text(record.get(column))
            if text is None:
                continue
            if not is_illegal_id(text):
                return column, text, passed
            passed += ((column, text),)
        return None, None, passed

    def map(self, record: dict) -> Event:
        """Map a record or raise Rejection (unusable) / Filtered (dropped by a rule).

        Only the column actually chosen for a role is consumed; the other candidates (say
        ``device_id`` when ``user_id`` was the distinct_id) stay as properties.
        """
        if self.profiles:
            return self._profile(record)
        if self.group_profiles:
            return self._group_profile(record)
        used: set[str | None] = set(self.always_consumed)
        if self.mapping.event_name is not None:
            name = self.mapping.event_name
        else:
            column, name = self._first(record, self.event_columns)
            used.add(column)
            if name is not None and not isinstance(name, str):
                name = str(name)
        if name is None:
            raise Rejection("missing_event_name", f"no event name in column(s) {', '.join(self.event_columns)}")
        if name in self.drop_events:
            raise Filtered(f"event {name!r} dropped by the mapping")
        column, distinct_id, passed = self._distinct_id(record, self.distinct_id_columns)
        used.add(column)
        column, stamp = self._first(record, self.timestamp_columns)
        used.add(column)
        if stamp is None:
            raise Rejection("bad_timestamp", f"no timestamp in column(s) {', '.join(self.timestamp_columns)}")
        timestamp_us = parse_timestamp(stamp, self.mapping.timestamp_unit, self.zone)
        self.apply_time_filters(timestamp_us)
        uuid_column, source_uuid = self._first(record, self.uuid_columns)
        insert_column, insert_id = self._first(record, self.insert_id_columns)
        used.add(uuid_column if source_uuid is not None else insert_column)
        properties = self._properties(record, used)
        # PostHog's batch doc also allows distinct_id inside properties; the top level wins.
        in_properties = properties.pop("distinct_id", None)
        if distinct_id is None:
            _, distinct_id, passed_in_properties = self._distinct_id({"properties.distinct_id": in_properties},
                                                                     ("properties.distinct_id",))
            passed += passed_in_properties
        if distinct_id is None:
            raise no_usable_id(f"no distinct_id in column(s) {', '.join(self.distinct_id_columns)}", passed)
        if self.has_person_or_groups:
            self._person_and_groups(record, properties)
        if source_uuid is not None:
            event_uuid = normalise_uuid(source_uuid)
        elif insert_id is not None:
            event_uuid = uuid_from_id(insert_id)
        else:
            event_uuid = uuid_from_content(self.source_tag, distinct_id, timestamp_us, name, properties)
        return Event(name, distinct_id, timestamp_us, event_uuid, properties, illegal_ids=passed)

    def _profile_time(self, record: dict, columns: tuple[str, ...]) -> int | None:
        """A profile row's time (None: placed after the job's last event by the identity pass)."""
        _, stamp = self._first(record, columns)
        if stamp is None:
            return None
        timestamp_us = parse_timestamp(stamp, self.mapping.timestamp_unit, self.zone)
        self.apply_time_filters(timestamp_us)
        return timestamp_us

    def _profile_values(self, record: dict, columns: tuple[str, ...] | None, named: set[str]) -> dict:
        """The values of ``columns`` (default: every column not ``named`` elsewhere in the table), empties left out."""
        names = columns if columns is not None else [c for c in record if c not in named]
        return {c: record[c] for c in names if record.get(c) is not None and record.get(c) != ""}

    def _profile(self, record: dict) -> Event:
        """A [profiles] row: one $set event for the person (see posthog_migrate.profiles)."""
        table = self.profiles
        id_columns, time_columns = table["distinct_id"], table.get("timestamp", ())
        column, distinct_id, passed = self._distinct_id(record, id_columns)
        if distinct_id is None:
            raise no_usable_id(f"no distinct_id in column(s) {', '.join(id_columns)}", passed)
        timestamp_us = self._profile_time(record, time_columns)
        set_once = self._profile_values(record, table.get("set_once", ()), set())
        named = {*id_columns, *time_columns, *table.get("set_once", ())}
        person_set = self._profile_values(record, table.get("set"), named)
        content = {k: v for k, v in record.items() if k not in id_columns}
        return person_profile_event(distinct_id, timestamp_us, profile_uuid(self.source_tag, "person", distinct_id,
                                                                            content),
                                    person_set, set_once, illegal_ids=passed)

    def _group_profile(self, record: dict) -> Event:
        """A [group_profiles] row: one $groupidentify for the group."""
        table = self.group_profiles
        group_type, key_columns, time_columns = table["group_type"], table["group_key"], table.get("timestamp", ())
        _, raw_key = self._first(record, key_columns)
        group_key = self._distinct_id_text(raw_key) if raw_key is not None else None
        if group_key is None:
            raise Rejection("invalid_special_event", f"no group key in column(s) {', '.join(key_columns)}")
        timestamp_us = self._profile_time(record, time_columns)
        group_set = self._profile_values(record, table.get("set"), {*key_columns, *time_columns})
        content = {k: v for k, v in record.items() if k not in key_columns}
        return group_profile_event(group_type, group_key, timestamp_us,
                                   profile_uuid(self.source_tag, f"group:{group_type}", group_key, content), group_set)

    def apply_time_filters(self, timestamp_us: int) -> None:
        if self.since_us is not None and timestamp_us < self.since_us:
            raise Filtered("before the mapping's since")
        if self.until_us is not None and timestamp_us >= self.until_us:
            raise Filtered("at or after the mapping's until")

    def _person_and_groups(self, record: dict, properties: dict) -> None:
        for key, columns in (("$set", self.mapping.set), ("$set_once", self.mapping.set_once)):
            values = {c: record[c] for c in columns if record.get(c) is not None and record.get(c) != ""}
            if values:
                existing = properties.get(key)
                properties[key] = {**existing, **values} if isinstance(existing, dict) else values
        groups = {
            group_type: str(record[column])
            for group_type, column in self.mapping.groups
            if record.get(column) not in (None, "")
        }
        if groups:
            existing = properties.get("$groups")
            properties["$groups"] = {**existing, **groups} if isinstance(existing, dict) else groups
