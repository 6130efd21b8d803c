"""Telling a server that refuses everything from one that refuses particular events.

A 400 splits a batch in halves, down to the one event the server refuses (posthog_migrate.sender). Against a
server that refuses *every* request (a proxy, a misconfigured host, a broken deployment) that costs two
requests per event and marks every event rejected although none was at fault. So:

* The :class:`RefusalMonitor`, shared by the sending threads, counts the refusals in a row, over all
  batches, that carry the same status and message, with nothing accepted in between (the *streak*). The
  numbers and hex ids in messages are ignored: proxies put request ids and times in their pages.
* A batch becomes suspect when the streak reaches :data:`WHOLESALE_STREAK`, nothing was accepted since the
  batch started (its own requests included) and all of its refusals were that one answer. Before it is
  held back, one event is tried alone (the *probe*). Accepted, the batch just holds a run of bad events
  and its bisection goes on. Refused, the batch is *held back*: neither acknowledged nor rejected, its
  thread waits. The probe is, when the run has had anything accepted, one of those events again (the
  *canary*, see :func:`harmless_to_resend`): refused now, the server refuses what it accepted before,
  whatever it says. Otherwise it is one of the batch's untried events (:func:`probe_index`), and counts
  only when refused with the same answer.
* Anything accepted meanwhile (by any thread) shows the server does accept events: held batches resume
  and are bisected to the end, and their rejections are real.
* :data:`MAX_HELD_BATCHES` held at once, or every request in flight held (the Dispatcher sees that), stops
  the run: nothing was marked rejected, and a re-run resumes from the checkpoint.

A single bad event makes at most about log2(batch size) + 1 refusals in a row (the bisection reaches it
through its halves and quarters, first halves first): 21 for the largest batch (1,000,000 events), below
the streak, and the probe is there for several bad events in a row.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from posthog_migrate.answers import Answer
from posthog_migrate.batches import Batch
from posthog_migrate.errors import SendFailed

# Refusals in a row, with the same status and message and nothing accepted, that make a batch suspect.
WHOLESALE_STREAK = 24
# Batches held back at once (so with nothing accepted since the first was held) that stop the run.
MAX_HELD_BATCHES = 3
# How often a held batch's thread looks at the stop flag.
HOLD_POLL_SECONDS = 0.1
# How many events of an accepted request are looked at for a canary.
CANARY_CANDIDATES = 20
# An event with any of these changes the person (or merges persons) when ingested: never a canary.
PERSON_CHANGING_KEYS = ("$set", "$set_once", "$unset", "$ip")

# A number, uuid or hex id in a message (request ids, times, positions): not part of its signature.
_VARYING_TOKEN = re.compile(r"[0-9A-Fa-f-]*\d[0-9A-Fa-f-]*")

Ranges = list[tuple[int, int]]
"""Event ranges of a batch still to be judged, in order, the next one *last* (a stack)."""


@dataclass
class BatchWatch:
    """What the monitor knows about one batch in flight."""

    acceptances_at_start: int
    signature: tuple[int, str] | None = None  # the signature (see _signature) of its first refusal
    uniform: bool = True                      # every refusal so far had that signature
    first_refusal: Answer | None = None       # its first refusal, as the server worded it


class RefusalMonitor:
    """The run's refusal streak and the batches held back; shared by all sending threads."""

    def __init__(self, where: str, stop: threading.Event, on_hold: Callable[[], None] | None = None):
        self.where = where
        self.stop = stop
        self.on_hold = on_hold  # called when a batch is held back (the Dispatcher checks for a stall)
        self._condition = threading.Condition()
        self._acceptances = 0
        self._signature: tuple[int, str] | None = None
        self._streak = 0
        self._held = 0
        self._canary: bytes | None = None
        # The answer and streak that got the latest batch held back: what a stop quotes.
        self._evidence: tuple[Answer | None, int] = (None, 0)

    @property
    def held(self) -> int:
        """How many batches are held back right now."""
        with self._condition:
            return self._held

    def watch(self) -> BatchWatch:
        """Start watching a batch, just before its first request."""
        with self._condition:
            return BatchWatch(self._acceptances)

    @property
    def canary(self) -> bytes | None:
        """An event accepted earlier in the run that is harmless to send again (None until there is one)."""
        return self._canary

    def accepted(self, events: Iterable[bytes] = ()) -> None:
        """A request of ``events`` was accepted: the streak ends, held batches resume, and the first of those
        events that is harmless to send again becomes the canary if there is none yet."""
        canary = None
        if self._canary is None:  # looked for outside the lock: it parses events
            canary = next(filter(harmless_to_resend, itertools.islice(events, CANARY_CANDIDATES)), None)
        with self._condition:
            self._acceptances += 1
            self._signature, self._streak = None, 0
            self._canary = self._canary or canary
            self._condition.notify_all()

    def refused(self, watch: BatchWatch, answer: Answer) -> bool:
        """A request of ``watch``'s batch was refused (400/413); whether the batch is now suspect."""
        signature = _signature(answer)
        with self._condition:
            if signature == self._signature:
                self._streak += 1
            else:
                self._signature, self._streak = signature, 1
            if watch.signature is None:
                watch.signature, watch.first_refusal = signature, answer
            watch.uniform = watch.uniform and watch.signature == signature
            return (watch.uniform and self._streak >= WHOLESALE_STREAK
                    and self._acceptances == watch.acceptances_at_start)

    def hold(self, watch: BatchWatch) -> bool:
        """Hold the batch back until something is accepted (True: bisect it to the end) or the run stops
        (False). Raises SendFailed when this batch makes too many held back."""
        with self._condition:
            if self._acceptances != watch.acceptances_at_start:
                return True
            self._evidence = (watch.first_refusal, self._streak)
            if self._held + 1 >= MAX_HELD_BATCHES:
                raise self.failure()
            self._held += 1
        if self.on_hold is not None:
            self.on_hold()
        with self._condition:
            try:
                while self._acceptances == watch.acceptances_at_start:
                    if self.stop.is_set():
                        return False
                    self._condition.wait(HOLD_POLL_SECONDS)
                return True
            finally:
                self._held -= 1

    def failure(self) -> SendFailed:
        """The error that stops the run: the server's answer, and that nothing was marked rejected."""
        with self._condition:
            answer, streak = self._evidence
        status, message = (answer.status, answer.message) if answer is not None else (0, "")
        return SendFailed(
            f"{self.where} refused {streak:,} requests in a row, whole batches, their halves and single events "
            f"alike, with the same answer ({status}: {message}), and accepted nothing: it refuses everything "
            "sent, not particular events. Stopped without marking anything rejected. Fix what the answer names "
            "(--host, a proxy in between, the server; or, if these events really are all invalid, the mapping), "
            "then run the same command again to resume."
        )


def _signature(answer: Answer) -> tuple[int, str]:
    """What two refusals must share to count as the same answer: the status, and the message without its
    numbers and ids."""
    return answer.status, _VARYING_TOKEN.sub("#", answer.message)


def harmless_to_resend(payload: bytes) -> bool:
    """Whether sending this (accepted) event again, after newer events of its person, changes nothing: it has
    a uuid (PostHog collapses the copy), is no special event (``$identify`` merges persons...) and sets no
    person property (``$set``, or ``$ip`` whose GeoIP would overwrite the person's)."""
    event = orjson.loads(payload)
    properties = event.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    name = event.get("event")
    return (bool(event.get("uuid")) and isinstance(name, str) and not name.startswith("$")
            and not any(key in event or key in properties for key in PERSON_CHANGING_KEYS))


def probe_index(batch: Batch, pending: Ranges) -> int:
    """The event to try alone before holding ``batch`` back: of the events in ``pending`` (not yet tried),
    the latest one whose person has no event before it among them. Sent ahead of the others, it cannot put
    a person's events out of order, and it is as far as that allows from the events just refused."""
    seen: set[bytes] = set()
    chosen = pending[-1][0]
    for start, end in reversed(pending):
        for index in range(start, end):
            person = orjson.dumps(orjson.loads(batch.payload(index)).get("distinct_id"))
            if person not in seen:
                seen.add(person)
                chosen = index
    return chosen


def without_index(pending: Ranges, index: int) -> Ranges:
    """``pending`` without the event ``index`` (the range holding it split around it)."""
    kept: Ranges = []
    for start, end in pending:
        if start <= index < end:
            kept.extend(piece for piece in ((index + 1, end), (start, index)) if piece[0] < piece[1])
        else:
            kept.append((start, end))
    return kept
