"""Stand-ins for Amplitude's Export API and Mixpanel's raw export and Engage APIs, on 127.0.0.1.

They behave as ../shared/reference/source-apis.md §6 says a faithful stand-in must: HTTP Basic checked;
Amplitude selects by upload hour with both ends inclusive, answers a zip of gzip'd JSON lines with several
members per hour, 404 when nothing matches and 400 over a size cap (or a span over 365 days); Mixpanel
selects whole UTC days, both inclusive, gzips only when asked and over 1,400 bytes, and shuffles its lines
and lets late events in between calls (its export is not byte-stable); Engage pages profiles 1,000 at a time
under a session_id. Scripted faults (429 with and without Retry-After, 504, a slow answer, a body cut or
stalled half-way, 401/402/403) come before the normal answers, one per request, in order.

Every request is logged (endpoint, parameters, status), which is how the tests check that each day was
asked for exactly once. They live with the tests, not in the package: they serve made-up data and faults,
while a user rehearses a pull better against the real API with a short range and ``--host local``.
"""

from __future__ import annotations

import base64
import gzip
import io
import random
import re
import threading
import time
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson

AMPLITUDE_KEY, AMPLITUDE_SECRET = "amp-key-4f1c9a7e", "amp-secret-b82d6e03"
SERVICE_ACCOUNT, SERVICE_SECRET = "migrator.1a2b3c.mp-service-account", "sa-secret-9e8d7c6b5a"
MIXPANEL_SECRET = "mp-api-secret-0f1e2d3c"
PROJECT_ID = "123"
GZIP_THRESHOLD_BYTES = 1400
_AMPLITUDE_HOUR = re.compile(r"^\d{8}T\d{2}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass
class Logged:
    endpoint: str          # amplitude | export | engage
    params: dict[str, str]
    status: int
    auth: str              # the Basic user name sent (never the secret)


@dataclass
class StandInData:
    amplitude: list[dict] = field(default_factory=list)
    mixpanel: list[dict] = field(default_factory=list)
    mixpanel_late: list[dict] = field(default_factory=list)    # answered from a range's second call on
    profiles: list[dict] = field(default_factory=list)
    group_profiles: list[dict] = field(default_factory=list)


class VendorStandIn:
    """The three endpoints on one local server. ``faults[endpoint]`` is a list of scripted answers."""

    def __init__(self, data: StandInData, size_cap: int | None = None, events_per_member: int = 4,
                 page_size: int = 1000, has_raw_export: bool = True):
        self.data = data
        self.size_cap = size_cap
        self.events_per_member = events_per_member
        self.page_size = page_size
        self.has_raw_export = has_raw_export
        self.faults: dict[str, list[str]] = {"amplitude": [], "export": [], "engage": []}
        self.log: list[Logged] = []
        self.sessions: dict[str, str] = {}          # session_id → the listing's filters
        self.release = threading.Event()            # ends "stall" faults
        self.stalled = threading.Event()            # set while a "stall" fault holds a body
        self._calls: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # a client that hung up (a timeout test) is fine
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> VendorStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def requests(self, endpoint: str, status: int | None = None) -> list[Logged]:
        return [entry for entry in self.log
                if entry.endpoint == endpoint and (status is None or entry.status == status)]

    # -- Amplitude ------------------------------------------------------------------------------------

    def amplitude(self, params: dict[str, str]) -> tuple[int, dict, bytes]:
        start, end = params.get("start", ""), params.get("end", "")
        if not (_AMPLITUDE_HOUR.match(start) and _AMPLITUDE_HOUR.match(end)):
            return 400, {}, b"Invalid start or end"
        first, last = (datetime.strptime(value, "%Y%m%dT%H").replace(tzinfo=UTC) for value in (start, end))
        if last < first or last - first > timedelta(days=365):
            return 400, {}, b"Invalid range"
        by_hour: dict[datetime, list[bytes]] = {}
        for event in self.data.amplitude:
            hour = _upload_hour(event)
            if first <= hour <= last:
                by_hour.setdefault(hour, []).append(orjson.dumps(event))
        if not by_hour:
            return 404, {}, b"No data available for the given range"
        size = sum(len(line) + 1 for lines in by_hour.values() for line in lines)
        if self.size_cap is not None and size > self.size_cap:
            return 400, {}, b"Raw data files were too large to export"
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            for hour, lines in sorted(by_hour.items()):
                for number, at in enumerate(range(0, len(lines), self.events_per_member)):
                    member = lines[at:at + self.events_per_member]
                    name = f"{PROJECT_ID}/{PROJECT_ID}_{hour:%Y-%m-%d}_{hour.hour}#{number}.json.gz"
                    # Amplitude's members may lack a final newline: the last member here does.
                    body = b"\n".join(member) + (b"" if number and at + self.events_per_member >= len(lines) else b"\n")
                    archive.writestr(name, gzip.compress(body, mtime=0))
        return 200, {"Content-Type": "application/zip"}, out.getvalue()

    # -- Mixpanel export ------------------------------------------------------------------------------

    def export(self, params: dict[str, str], accepts_gzip: bool) -> tuple[int, dict, bytes]:
        if not self.has_raw_export:
            return 402, {}, _error("/api/2.0/export", "Your plan does not support raw data export")
        first, last = params.get("from_date", ""), params.get("to_date", "")
        if not (_DAY.match(first) and _DAY.match(last)) or last < first:
            return 400, {}, _error("/api/2.0/export", "invalid from_date or to_date")
        with self._lock:
            call = self._calls[("export", first + last)] = self._calls.get(("export", first + last), 0) + 1
        names = orjson.loads(params["event"]) if params.get("event") else None
        where = re.fullmatch(r'properties\["(.+)"\]\s*==\s*"(.*)"', params.get("where", ""))
        events = self.data.mixpanel + (self.data.mixpanel_late if call > 1 else [])
        lines = []
        for event in events:
            day = datetime.fromtimestamp(event["properties"]["time"] / 1000, UTC).strftime("%Y-%m-%d")
            if first <= day <= last and (names is None or event["event"] in names) and (
                    where is None or str(event["properties"].get(where.group(1))) == where.group(2)):
                moved = dict(event, properties=dict(event["properties"]))
                if params.get("time_in_ms") != "true":
                    moved["properties"]["time"] //= 1000
                lines.append(orjson.dumps(moved) + b"\n")
        random.Random(call).shuffle(lines)  # not byte-stable between calls
        if params.get("limit"):
            lines = lines[:int(params["limit"])]
        body = b"".join(lines)
        if accepts_gzip and len(body) > GZIP_THRESHOLD_BYTES:
            return 200, {"Content-Type": "text/plain", "Content-Encoding": "gzip"}, gzip.compress(body)
        return 200, {"Content-Type": "text/plain"}, body

    # -- Mixpanel Engage ------------------------------------------------------------------------------

    def engage(self, form: dict[str, str]) -> tuple[int, dict, bytes]:
        filters = orjson.dumps({key: form.get(key) for key in ("where", "data_group_id", "output_properties")})
        session = form.get("session_id")
        if session is None:
            with self._lock:
                session = f"{int(time.time())}-{len(self.sessions):06d}"
                self.sessions[session] = filters.decode()
        elif self.sessions.get(session) != filters.decode():
            return 400, {}, _error("/api/query/engage", "Invalid session_id: the listing expired, start again")
        page = int(form.get("page", "0"))
        profiles = self.data.group_profiles if form.get("data_group_id") else self.data.profiles
        where = re.fullmatch(r'properties\["(.+)"\]\s*==\s*"(.*)"', form.get("where", ""))
        if where:
            profiles = [p for p in profiles if str(p["$properties"].get(where.group(1))) == where.group(2)]
        if form.get("output_properties"):
            keep = set(orjson.loads(form["output_properties"]))
            profiles = [dict(p, **{"$properties": {k: v for k, v in p["$properties"].items() if k in keep}})
                        for p in profiles]
        results = profiles[page * self.page_size:(page + 1) * self.page_size]
        return 200, {"Content-Type": "application/json"}, orjson.dumps({
            "page": page, "page_size": self.page_size, "session_id": session, "status": "ok",
            "total": len(profiles), "results": results})

    # -- auth -----------------------------------------------------------------------------------------

    def authorised(self, endpoint: str, header: str | None, project_id: str | None) -> tuple[bool, str]:
        """(whether the Basic credentials are right, the user name sent)."""
        try:
            user, _, password = base64.b64decode((header or "").removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            return False, ""
        if endpoint == "amplitude":
            return (user, password) == (AMPLITUDE_KEY, AMPLITUDE_SECRET), user
        if (user, password) == (SERVICE_ACCOUNT, SERVICE_SECRET):
            return project_id == PROJECT_ID, user
        return (user, password) == (MIXPANEL_SECRET, ""), user


def _upload_hour(event: dict) -> datetime:
    moment = datetime.strptime(event["server_upload_time"][:13], "%Y-%m-%d %H")
    return moment.replace(tzinfo=UTC)


def _error(request: str, message: str) -> bytes:
    return orjson.dumps({"request": request, "error": message})


ROUTES = {"/api/2/export": "amplitude", "/api/2.0/export": "export", "/api/query/engage": "engage",
          "/api/2.0/engage": "engage"}


def _handler(stand_in: VendorStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK wait between

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._serve({})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            self._serve({key: values[-1] for key, values in parse_qs(body).items()})

        def _serve(self, form: dict[str, str]) -> None:
            parts = urlsplit(self.path)
            endpoint = ROUTES.get(parts.path)
            params = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            if endpoint is None or (endpoint == "engage") != (self.command == "POST"):
                return self._answer(404, {}, b"not found", None, params)
            ok, user = stand_in.authorised(endpoint, self.headers.get("Authorization"), params.get("project_id"))
            entry = Logged(endpoint, {**params, **form}, 0, user)
            stand_in.log.append(entry)
            with stand_in._lock:
                fault = stand_in.faults[endpoint].pop(0) if stand_in.faults[endpoint] else "ok"
            if fault != "ok" and self._fault(fault, entry):
                return
            if not ok:
                return self._answer(401, {}, _error(parts.path, "Invalid credentials"), entry)
            if endpoint == "amplitude":
                status, headers, body = stand_in.amplitude(params)
            elif endpoint == "export":
                status, headers, body = stand_in.export(params, "gzip" in self.headers.get("Accept-Encoding", ""))
            else:
                status, headers, body = stand_in.engage(form)
            if fault.startswith(("stall:", "cut:")) and status == 200:
                return self._partial(fault, headers, body, entry)
            self._answer(status, headers, body, entry)

        def _fault(self, fault: str, entry: Logged) -> bool:
            """Answer a scripted fault; False when the fault only shapes the normal answer (slow, stall, cut)."""
            kind, _, argument = fault.partition(":")
            if kind == "slow":
                time.sleep(float(argument))
                return False
            if kind in ("stall", "cut"):
                return False
            headers = {}
            if kind == "429" and argument.startswith("retry-after="):
                headers["Retry-After"] = argument.split("=", 1)[1]
            elif kind == "429" and argument.startswith("retry-after-date="):
                when = datetime.now(UTC) + timedelta(seconds=float(argument.split("=", 1)[1]))
                headers["Retry-After"] = format_datetime(when, usegmt=True)
            messages = {"429": "Rate limit exceeded", "401": "Invalid credentials", "402": "Payment required",
                        "403": "You do not have access to this project", "504": "Gateway timeout",
                        "500": "Internal error"}
            self._answer(int(kind), headers, _error(urlsplit(self.path).path, messages.get(kind, kind)), entry)
            return True

        def _partial(self, fault: str, headers: dict, body: bytes, entry: Logged) -> None:
            """Send the headers and the first bytes of a 200's body, then hold (stall) or close (cut)."""
            kind, _, size = fault.partition(":")
            entry.status = 200
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:int(size)])
            self.wfile.flush()
            if kind == "stall":
                stand_in.stalled.set()
                stand_in.release.wait(60)
            self.close_connection = True

        def _answer(self, status: int, headers: dict, body: bytes, entry: Logged | None,
                    params: dict | None = None) -> None:
            if entry is not None:
                entry.status = status
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


# --- data shaped like the real exports ---------------------------------------------------------------

def amplitude_events(days: list[str], per_hour: int = 3, hours: range = range(0, 24, 5), seed: int = 1) -> list[dict]:
    """Amplitude export rows uploaded on ``days`` (YYYY-MM-DD), ``per_hour`` in each of ``hours``; a few were
    uploaded an hour after they happened (the export is by upload time)."""
    rng = random.Random(seed)
    rows = []
    for day in days:
        for hour in hours:
            for number in range(per_hour):
                uploaded = datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00")
                uploaded += timedelta(minutes=rng.randrange(60))
                happened = uploaded - timedelta(minutes=rng.choice([0, 1, 70]))
                user = rng.randrange(20)
                rows.append({
                    "uuid": f"{rng.getrandbits(128):032x}"[:8] + "-0000-4000-8000-" + f"{len(rows):012d}",
                    "event_type": rng.choice(["[Amplitude] Page Viewed", "Signed Up", "Note Created"]),
                    "amplitude_id": 1000 + user, "user_id": f"user-{user}", "device_id": f"device-{user}",
                    "event_time": happened.strftime("%Y-%m-%d %H:%M:%S.%f"),
                    "server_upload_time": uploaded.strftime("%Y-%m-%d %H:%M:%S.%f"),
                    "event_properties": {"plan": rng.choice(["free", "pro"]), "n": number},
                    "user_properties": {"country": "DE"}, "platform": "Web", "os_name": "Chrome",
                })
    return rows


def mixpanel_events(days: list[str], per_day: int = 6, seed: int = 2, prefix: str = "mp") -> list[dict]:
    """Mixpanel export rows (times in ms, as ``time_in_ms=true`` answers) on each of ``days``."""
    rng = random.Random(seed)
    rows = []
    for day in days:
        midnight = datetime.fromisoformat(f"{day}T00:00:00+00:00")
        for _ in range(per_day):
            moment = midnight + timedelta(seconds=rng.randrange(86_400), milliseconds=rng.randrange(1000))
            user = rng.randrange(15)
            rows.append({"event": rng.choice(["Signed up", "Viewed page", "Purchased"]), "properties": {
                "time": int(moment.timestamp() * 1000), "distinct_id": f"u{user}",
                "$insert_id": f"{prefix}-{len(rows)}",
                "$device_id": f"d{user}", "mp_processing_time_ms": int(moment.timestamp() * 1000) + 5000,
                "$os": rng.choice(["Linux", "Mac OS X"]), "plan": rng.choice(["free", "pro"])}})
    return rows


def profiles(count: int) -> list[dict]:
    """Engage results: ``{"$distinct_id", "$properties"}``."""
    return [{"$distinct_id": f"u{number}", "$properties": {
        "$email": f"user{number}@example.com", "$name": f"User {number}", "$created": "2023-05-01T10:00:00",
        "$last_seen": "2024-01-02T03:04:05", "plan": "pro" if number % 3 else "free"}} for number in range(count)]
