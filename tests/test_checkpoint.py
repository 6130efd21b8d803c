"""The send checkpoint's snapshot: what the checkpoint thread writes must not change under it."""

from __future__ import annotations

import dataclasses

from posthog_migrate.checkpoint import SendProgress


def test_snapshot_is_asdict_and_does_not_share_mutable_fields():
    progress = SendProgress(next_seq=5, cursor=[3, 4], layout={"lanes": 2}, host="local", events_sent=9)
    progress.mark_window_start()
    snapshot = progress.to_dict()
    assert snapshot == dataclasses.asdict(progress)
    assert list(snapshot) == [f.name for f in dataclasses.fields(SendProgress)]
    progress.cursor[0] = 99
    progress.layout["lanes"] = 7
    progress.window_start["events_sent"] = 0
    assert snapshot["cursor"] == [3, 4] and snapshot["layout"] == {"lanes": 2}
    assert snapshot["window_start"]["events_sent"] == 9
    assert SendProgress.from_dict(snapshot).to_dict() == snapshot
