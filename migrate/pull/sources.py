"""What an ``amplitude://`` or ``mixpanel://`` argument asks for, and the chunks that fetch exactly that.

Light on purpose (the standard library only): the command line and the job's default name read these URIs
before any heavy module is imported.

    amplitude://export?start=2023-01-01&end=2024-06-30            (YYYY-MM-DDTHH narrows to hours)
    mixpanel://export?project_id=123&start=2023-01-01&end=2023-12-31
    mixpanel://engage?project_id=123[&data_group_id=N&group_type=company]

Both APIs count ``start`` and ``end`` inclusively, so a chunk is an inclusive pair too: Amplitude's
``start=20240101T00&end=20240101T23`` is one day, Mixpanel's ``from_date=2024-01-01&to_date=2024-01-31`` one
month. The chunks of a range are cut on day (Amplitude) or calendar-month (Mixpanel) boundaries, and a chunk
the API cannot answer in one piece is halved (:meth:`Chunk.halves`): whatever happens, the chunks cover every
hour or day of the range once, and nothing outside it, and none is longer than a month (Amplitude refuses
ranges over 365 days; PostHog's own import stops at one year per job).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit

from posthog_migrate.errors import ConfigError, describe_unknown_keys

API_SCHEMES = ("amplitude", "mixpanel")
# Settings of the connection, not of the data: left out of the job's fingerprint and name, so that a job
# moved behind a proxy (or a test's stand-in on another port) is the same job.
TRANSPORT_PARAMETERS = ("endpoint", "timeout")
KNOWN_PARAMETERS = {
    ("amplitude", "export"): ("start", "end", "region"),
    ("mixpanel", "export"): ("project_id", "start", "end", "event", "where", "region"),
    ("mixpanel", "engage"): ("project_id", "where", "output_properties", "data_group_id", "group_type",
                             "workspace_id", "region"),
}
# Query parameters that would carry a secret: refused, so that no credential is ever part of a URI (which is
# printed, and stored with the job).
SECRET_PARAMETERS = ("api_key", "secret", "secret_key", "api_secret", "password", "token", "key",
                     "service_account", "service_secret", "username", "user")
# The residency hosts (source-apis.md §1, §2, §5).
HOSTS = {
    ("amplitude", "export", "us"): "https://amplitude.com",
    ("amplitude", "export", "eu"): "https://analytics.eu.amplitude.com",
    ("mixpanel", "export", "us"): "https://data.mixpanel.com",
    ("mixpanel", "export", "eu"): "https://data-eu.mixpanel.com",
    ("mixpanel", "export", "in"): "https://data-in.mixpanel.com",
    ("mixpanel", "engage", "us"): "https://mixpanel.com",
    ("mixpanel", "engage", "eu"): "https://eu.mixpanel.com",
    ("mixpanel", "engage", "in"): "https://in.mixpanel.com",
}
PATHS = {("amplitude", "export"): "/api/2/export", ("mixpanel", "export"): "/api/2.0/export",
         ("mixpanel", "engage"): "/api/query/engage"}
# How long an export may take to answer (PostHog's client: 600 s for Amplitude, 300 s for Mixpanel).
READ_TIMEOUTS = {"amplitude": 600.0, "mixpanel": 300.0}


def is_api_uri(argument: str) -> bool:
    """Whether a SOURCE argument names a vendor's export API rather than files."""
    return argument.split("://", 1)[0].lower() in API_SCHEMES if "://" in argument else False


@dataclass(frozen=True, slots=True)
class Chunk:
    """One request's range, inclusive at both ends: hours (Amplitude) or days (Mixpanel)."""

    first: datetime
    last: datetime
    unit: timedelta

    @property
    def name(self) -> str:
        """``20240101T00-20240101T23`` (hours) or ``2024-01-01_2024-01-31`` (days): also its file's name."""
        if self.unit == HOUR:
            return f"{self.first:%Y%m%dT%H}-{self.last:%Y%m%dT%H}"
        return f"{self.first:%Y-%m-%d}_{self.last:%Y-%m-%d}"

    @property
    def units(self) -> int:
        return (self.last - self.first) // self.unit + 1

    def halves(self) -> tuple[Chunk, Chunk] | None:
        """The chunk cut in two halves that together are the chunk; None when it is a single hour or day."""
        if self.units < 2:
            return None
        middle = self.first + (self.units // 2) * self.unit
        return Chunk(self.first, middle - self.unit, self.unit), Chunk(middle, self.last, self.unit)

    def to_dict(self) -> dict:
        return {"name": self.name, "first": self.first.isoformat(), "last": self.last.isoformat(),
                "unit_seconds": int(self.unit.total_seconds())}

    @classmethod
    def from_dict(cls, data: dict) -> Chunk:
        return cls(datetime.fromisoformat(data["first"]), datetime.fromisoformat(data["last"]),
                   timedelta(seconds=data["unit_seconds"]))


HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass
class Pulled:
    """What the pull stage hands to the job: the downloaded files (inputs like any other), the format they are
    read in, and what the job's fingerprint records of the sources. Empty when no source is an API."""

    files: list[str] = field(default_factory=list)
    format: str | None = None
    fingerprint: list[dict] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ApiSource:
    """A parsed ``amplitude://`` or ``mixpanel://`` argument."""

    vendor: str                      # amplitude | mixpanel: also the format its downloads are read in
    kind: str                        # export | engage
    parameters: tuple[tuple[str, str], ...]  # the data's parameters, sorted (no endpoint, no timeout)
    base_url: str                    # scheme and host: the region's, or endpoint=
    read_timeout: float
    first: datetime | None = None    # the range's first hour or day (exports), inclusive
    last: datetime | None = None     # its last, inclusive

    @property
    def key(self) -> str:
        """The URI as the job records it: without the endpoint or timeout (and never with credentials)."""
        return f"{self.vendor}://{self.kind}" + (f"?{urlencode(self.parameters)}" if self.parameters else "")

    @property
    def folder(self) -> str:
        """Its downloads' folder under ``WORKDIR/downloads``: readable, and one per distinct source."""
        return f"{self.vendor}-{self.kind}-{hashlib.sha256(self.key.encode()).hexdigest()[:8]}"

    @property
    def url(self) -> str:
        return self.base_url + PATHS[(self.vendor, self.kind)]

    def parameter(self, name: str) -> str | None:
        return dict(self.parameters).get(name)

    @property
    def label(self) -> str:
        """``Amplitude export``, ``Mixpanel engage``: for messages and progress bars."""
        return f"{self.vendor.capitalize()} {self.kind}"

    def plan(self) -> list[Chunk]:
        """The chunks of the range: Amplitude a day each, Mixpanel a calendar month each, clipped to it."""
        assert self.first is not None and self.last is not None
        unit = HOUR if self.vendor == "amplitude" else DAY
        chunks, first = [], self.first
        while first <= self.last:
            if unit == HOUR:
                boundary = datetime.combine(first.date() + DAY, datetime.min.time(), UTC)
            else:
                boundary = datetime(first.year + first.month // 12, first.month % 12 + 1, 1, tzinfo=UTC)
            last = min(boundary - unit, self.last)
            chunks.append(Chunk(first, last, unit))
            first = last + unit
        return chunks


def parse_api_uri(argument: str) -> ApiSource:
    """Parse and check an API source argument; a ConfigError says what to fix."""
    parts = urlsplit(argument)
    vendor, kind = parts.scheme.lower(), parts.netloc.rpartition("@")[2].lower()
    shown = f"{vendor}://{kind}"
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{shown}: remove the credentials from the URI; give them in the environment ({_credential_names(vendor)})"
            " or with --source-credentials FILE. In the URI they would be shown and stored with the job.")
    if (vendor, kind) not in KNOWN_PARAMETERS:
        kinds = ", ".join(f"{v}://{k}" for v, k in KNOWN_PARAMETERS if v == vendor)
        raise ConfigError(f"{argument.split('?', 1)[0]}: unknown API source; use {kinds}")
    if parts.path.strip("/"):
        raise ConfigError(f"{shown}{parts.path}: write the settings as ?name=value, e.g. {_example(vendor, kind)}")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secrets = sorted({name for name, _ in pairs if name.lower() in SECRET_PARAMETERS})
    if secrets:
        raise ConfigError(
            f"{shown}: remove {', '.join(secrets)} from the URI; give credentials in the environment "
            f"({_credential_names(vendor)}) or with --source-credentials FILE, never in the URI (it is printed "
            "and stored with the job)")
    settings = dict(pairs)
    if len(settings) < len(pairs):
        repeated = sorted({name for name, _ in pairs if [n for n, _ in pairs].count(name) > 1})
        raise ConfigError(f"{shown}: {', '.join(repeated)} given twice")
    known = KNOWN_PARAMETERS[(vendor, kind)]
    unknown = [name for name in settings if name not in known + TRANSPORT_PARAMETERS]
    if unknown:
        raise ConfigError(f"{shown}: unknown setting(s) {describe_unknown_keys(unknown, list(known))}; known: "
                          f"{', '.join(known + TRANSPORT_PARAMETERS)}")
    base_url = _base_url(vendor, kind, settings.pop("region", None), settings.pop("endpoint", None), shown)
    read_timeout = _timeout(settings.pop("timeout", None), vendor, shown)
    first = last = None
    if kind == "export":
        first, last = _range(vendor, settings, shown)
    if kind == "engage" and ("data_group_id" in settings) != ("group_type" in settings):
        raise ConfigError(f"{shown}: group profiles need both data_group_id=N and group_type=NAME (e.g. company)")
    return ApiSource(vendor, kind, tuple(sorted(settings.items())), base_url, read_timeout, first, last)


def source_key(argument: str) -> str:
    """The key of an API argument (see :attr:`ApiSource.key`), or the argument itself when it does not parse:
    used for the job's default name, where a bad URI is reported later."""
    try:
        return parse_api_uri(argument).key
    except ConfigError:
        return argument


def _base_url(vendor: str, kind: str, region: str | None, endpoint: str | None, shown: str) -> str:
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{shown}: endpoint={endpoint!r} must be a URL such as https://proxy.example.com")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{shown}: remove the user name and password from endpoint=; credentials come "
                              "from the environment")
        return endpoint.rstrip("/")
    regions = sorted(r for v, k, r in HOSTS if (v, k) == (vendor, kind))
    region = (region or "us").lower()
    if region not in regions:
        raise ConfigError(f"{shown}: region={region!r}: use one of {', '.join(regions)}")
    return HOSTS[(vendor, kind, region)]


def _timeout(text: str | None, vendor: str, shown: str) -> float:
    if text is None:
        return READ_TIMEOUTS[vendor]
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{shown}: timeout={text!r} must be a positive number of seconds")
    return value


def _range(vendor: str, settings: dict[str, str], shown: str) -> tuple[datetime, datetime]:
    """The export's first and last hour (Amplitude) or day (Mixpanel), both inclusive, in UTC."""
    missing = [name for name in ("start", "end") if not settings.get(name)]
    if missing:
        raise ConfigError(f"{shown}: give {' and '.join(missing)} (UTC dates, both inclusive), e.g. "
                          f"{_example(vendor, 'export')}")
    first = _moment(settings["start"], vendor, "start", shown)
    last = _moment(settings["end"], vendor, "end", shown)
    if last < first:
        raise ConfigError(f"{shown}: end={settings['end']} is before start={settings['start']}")
    return first, last


def _moment(text: str, vendor: str, name: str, shown: str) -> datetime:
    """``2024-01-31`` → that day (its first hour for start, its last for Amplitude's end); ``2024-01-31T05``
    → that hour (Amplitude only: Mixpanel's smallest range is a day)."""
    try:
        if len(text) == 10:
            day = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
            return day + timedelta(hours=23) if vendor == "amplitude" and name == "end" else day
        if len(text) == 13 and text[10] == "T":
            hour = datetime.combine(date.fromisoformat(text[:10]), datetime.min.time(), UTC)
            hour += timedelta(hours=int(text[11:]))
            if vendor == "amplitude" and 0 <= int(text[11:]) <= 23:
                return hour
            if vendor == "mixpanel":
                raise ConfigError(f"{shown}: {name}={text}: Mixpanel exports whole days; write {text[:10]}")
    except ValueError:
        pass
    form = "YYYY-MM-DD or YYYY-MM-DDTHH (UTC)" if vendor == "amplitude" else "YYYY-MM-DD (UTC)"
    raise ConfigError(f"{shown}: {name}={text!r} is not a date; write {form}")


def _credential_names(vendor: str) -> str:
    if vendor == "amplitude":
        return "AMPLITUDE_API_KEY and AMPLITUDE_SECRET_KEY"
    return "MIXPANEL_SERVICE_ACCOUNT and MIXPANEL_SERVICE_SECRET, or MIXPANEL_API_SECRET"


def _example(vendor: str, kind: str) -> str:
    if vendor == "amplitude":
        return "amplitude://export?start=2024-01-01&end=2024-01-31"
    if kind == "export":
        return "mixpanel://export?project_id=123&start=2024-01-01&end=2024-01-31"
    return "mixpanel://engage?project_id=123"
