"""The script a user would otherwise write: posthog-python with historical_migration=True.

    python benchmarks/baseline_posthog_python.py FOLDER_OF_JSON_GZ HOST COUNT

It loads every event, sorts them in memory by time (the SDK does not sort), and calls ``capture()`` in a
loop with gzip on and a queue big enough that nothing is dropped, then waits for the queue to drain.
Mapping is the same as the benchmark's mapping file: event_type, user_id or device_id, event_time.
"""

from __future__ import annotations

import gzip
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
from posthog import Posthog


def main() -> None:
    folder, host, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    events = []
    for path in sorted(folder.glob("*.json.gz")):
        with gzip.open(path, "rb") as rows:
            for line in rows:
                row = orjson.loads(line)
                moment = datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
                properties = dict(row["event_properties"])
                properties.update({k: row[k] for k in ("platform", "os_name", "country", "city")})
                events.append((moment, row["event_type"], row["user_id"] or row["device_id"], properties))
    events.sort(key=lambda event: event[0])
    client = Posthog("phc_benchmark", host=host, historical_migration=True, gzip=True,
                     max_queue_size=count + 1, sync_mode=False)
    for moment, name, distinct_id, properties in events:
        client.capture(name, distinct_id=distinct_id, properties=properties, timestamp=moment)
    client.flush()
    client.shutdown()


if __name__ == "__main__":
    main()
