"""Person and group profiles as records of their own: one ``$set`` (or ``$groupidentify``) event each.

A profile holds a person's latest properties (Mixpanel's Engage export, a warehouse's users table). It becomes
one event, placed at the profile's own time (Mixpanel's ``$last_seen``, the table's ``updated_at``) so that
PostHog applies it after the older ``$set``s of the person's events. A profile without a time is placed just
after the job's last event: the identity pass (posthog_migrate.identity) sets its time once the whole job is
read. Its uuid derives from the profile itself (who, and every property as exported), so a re-run sends the
same event and a changed profile a new one.
"""

from __future__ import annotations

import uuid as uuid_module
from typing import Any

import orjson
from posthog_migrate.event import Event, Rejection, json_default, uuid5_text

# Fixed forever: the uuids of profile events derive from it.
PROFILE_NAMESPACE = uuid_module.UUID("5b0e7a3c-9d21-5f4e-a6b8-3c2d1e0f9a87")
# The source name of profile events: how the summary and inspect tell them from the events they count.
PERSON_PROFILE = "(person profile)"
GROUP_PROFILE = "(group profile)"
PROFILE_SOURCES = frozenset({PERSON_PROFILE, GROUP_PROFILE})
EMPTY_PROFILE_RULE = "profile without properties"


def profile_uuid(source_tag: str, kind: str, key: str, content: Any) -> str:
    """UUIDv5 of the profile: its source, its kind (``person``, or ``group:<type>``), whose it is, and its
    content as exported (keys sorted), so that the uuid does not change when the mapping of names does."""
    try:
        text = orjson.dumps([source_tag, kind, key, content], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                            default=json_default)
    except (TypeError, orjson.JSONEncodeError) as error:
        raise Rejection("unserialisable", f"the profile cannot be serialised as JSON: {error}") from None
    return uuid5_text(PROFILE_NAMESPACE, text.decode())


def person_profile_event(distinct_id: str, timestamp_us: int | None, uuid: str, person_set: dict,
                         person_set_once: dict, **event_fields: Any) -> Event:
    """The ``$set`` event of a person's profile; ``timestamp_us`` None places it after the job's last event."""
    properties: dict = {"$geoip_disable": True}  # else PostHog would locate the migration machine onto the person
    if person_set:
        properties["$set"] = person_set
    if person_set_once:
        properties["$set_once"] = person_set_once
    if not person_set and not person_set_once:
        from posthog_migrate.mapping import Filtered

        raise Filtered(EMPTY_PROFILE_RULE)
    return Event("$set", distinct_id, timestamp_us or 0, uuid, properties, source_event=PERSON_PROFILE,
                 after_last_event=timestamp_us is None, **event_fields)


def group_profile_event(group_type: str, group_key: str, timestamp_us: int | None, uuid: str, group_set: dict,
                        **event_fields: Any) -> Event:
    """The ``$groupidentify`` of a group's profile. Its distinct_id is ``$<type>_<key>``, as PostHog's server
    libraries send group identifies: a group profile belongs to no person."""
    if not group_set:
        from posthog_migrate.mapping import Filtered

        raise Filtered(EMPTY_PROFILE_RULE)
    properties = {"$group_type": group_type, "$group_key": group_key, "$group_set": group_set, "$geoip_disable": True}
    return Event("$groupidentify", f"${group_type}_{group_key}", timestamp_us or 0, uuid, properties,
                 source_event=GROUP_PROFILE, after_last_event=timestamp_us is None, **event_fields)
