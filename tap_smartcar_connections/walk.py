"""The walk: how every stream reads one partition's list, and the only place a bookmark moves.

The APIs list newest first and have no "since" filter, so an incremental read walks pages until
it reaches an item older than the partition's bookmark (its floor) and stops there. A full read
(FULL_TABLE, and the v3 lists without a replication key) walks to the last page. The guarantees,
each in one method of `Walk`:

- where the walk stops (`_floor`): the bookmark, or `start_date`; a bookmark made under the other
  API version, or after the run started, is not trusted (`_distrust`);
- ties (`_emit`): items at the floor instant are sent unless the state lists them as sent
  (`keys_at_bookmark`), so a late tie is never lost and nothing is sent twice;
- order (`_emit`): the stop at the floor is only trusted while everything read is newest first,
  within each page and from one page to the next; the tap cannot see pages it does not read;
- dedupe (`_emit`): where pages shift, each item is sent once per run;
- checkpoints (`_checkpoint`, `_resume`): after each page the partition's state holds where to
  go on; a rerun reads the new head down to the checkpoint, then goes on from its page, if the
  checkpoint still fits the list;
- settling (`_settle`): the bookmark moves only after a complete walk, never past the run's
  start;
- shifting pages (`Pass.doubt`): a walk under which the list changed is read again, at most
  `REREADS` times, else neither the bookmark nor ACTIVATE_VERSION follows;
- every walk ends (`paging.PagingGuard`): a token handed out twice, or a run of pages with nothing
  new, ends the run with one line about the paging.

How a list pages (cursors that hold their place, page numbers that shift) is a
`paging.Paging`.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import json
import typing as t
from dataclasses import dataclass, field
from datetime import datetime

from tap_smartcar_connections.errors import Refused
from tap_smartcar_connections.paging import PagingGuard, Saved, StaleCheckpoint
from tap_smartcar_connections.redaction import one_line
from tap_smartcar_connections.timestamps import normalize_timestamp

if t.TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Generator

    from tap_smartcar_connections.pages import Page
    from tap_smartcar_connections.paging import Paging
    from tap_smartcar_connections.policy import Clock

REREADS = 2
"""How often a walk over shifting pages is read again when the list changed under it."""
PROGRESS_SECONDS = 60.0
"""A walk logs its progress at least this often."""
IDENTITY_MASK = (1 << 64) - 1
"""An item's id hash as a non-negative number, kept above the pass and sent bits."""


class Ending(enum.Enum):
    """How one pass over a list ended."""

    FLOOR = "reached the floor"
    END = "read to the last page"
    CUT = "stopped at a dry run's record limit"


def key_digest(record: t.Mapping[str, t.Any]) -> str:
    """A short digest of a connection's key, kept in the state instead of the raw IDs."""
    return hashlib.sha256(f"{record['userId']}\0{record['vehicleId']}".encode()).hexdigest()[:16]


@dataclass
class Checkpoint:
    """Where an unfinished walk goes on from, as kept in the partition's state."""

    cursor: str
    """The next page's token."""
    newest: str
    """The newest instant read (the bookmark-to-be), and the keys read at it."""
    newest_keys: list[str]
    last: str
    """The last instant read: how far back the walk had come."""
    floor: str
    page_size: int
    unordered: bool = False
    total: int | None = None
    shrank: str = ""

    @classmethod
    def load(cls, saved: t.Any, floor: str, page_size: int, started: str) -> Checkpoint | None:
        """The checkpoint in `saved`, or None if it does not fit.

        It does not fit if made for another floor or `page_size`, or malformed.
        """
        try:
            checkpoint = cls(
                cursor=saved["cursor"],
                newest=saved["newest"],
                newest_keys=saved["newest_keys"],
                last=saved["last"],
                floor=saved["floor"],
                page_size=saved["page_size"],
                unordered=saved.get("unordered", False),
                total=saved.get("total"),
                shrank=one_line(saved.get("shrank"), 200),
            )
            usable = (
                isinstance(checkpoint.cursor, str)
                and bool(checkpoint.cursor)
                and checkpoint.floor == floor
                and checkpoint.page_size == page_size
                and type(checkpoint.page_size) is int
                and isinstance(checkpoint.newest_keys, list)
                and all(isinstance(key, str) for key in checkpoint.newest_keys)
                and isinstance(checkpoint.unordered, bool)
                and (checkpoint.total is None or type(checkpoint.total) is int)
                and normalize_timestamp(checkpoint.last) <= started
                and normalize_timestamp(checkpoint.newest) == checkpoint.newest <= started
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return checkpoint if usable else None

    def dump(self) -> dict[str, t.Any]:
        """The checkpoint as the state keeps it (`total` and `shrank` only when known)."""
        saved: dict[str, t.Any] = {
            "cursor": self.cursor,
            "newest": self.newest,
            "newest_keys": self.newest_keys,
            "last": self.last,
            "floor": self.floor,
            "page_size": self.page_size,
            "unordered": self.unordered,
        }
        if self.total is not None:
            saved["total"] = self.total
        if self.shrank:
            saved["shrank"] = self.shrank  # a resume must not forget it
        return saved


@dataclass
class Pass:
    """One read over a partition's list, newest first: where it stops and what it has read."""

    floor: str
    """Stop below this instant: the bookmark or `start_date` ("" reads to the last page)."""
    skip: frozenset[str]
    """Keys (`key_digest`) already sent at the `floor` instant."""
    number: int
    """This pass's number in the run (a resumed walk's head is a pass of its own)."""
    began: float
    newest: str = ""
    """The newest instant read that may become the bookmark (never after the run's start)."""
    newest_keys: set[str] = field(default_factory=set)
    last: str = ""
    """The last instant read: how far back the pass has come."""
    unordered: bool = False
    totals: set[int] = field(default_factory=set)
    """Every size of the whole list the API gave during the pass (`Page.total`)."""
    total: int | None = None
    """The last of them."""
    read: int = 0
    """Distinct items read, where pages shift (to check against `total`)."""
    shrank: str = ""
    """How the list shrank between two pages without the next one starting with an item
    already read (which would prove nothing moved up past the pass)."""
    resumed: bool = False
    pages: int = 0
    records: int = 0
    top: str = ""
    logged: float = 0.0

    def absorb(self, head: Pass, checkpoint: Checkpoint) -> None:
        """Take in a resumed walk's checkpoint and the new head read before going on from it."""
        self.newest, self.newest_keys = checkpoint.newest, set(checkpoint.newest_keys)
        if head.newest > self.newest:
            self.newest, self.newest_keys = head.newest, head.newest_keys
        elif head.newest == self.newest:
            self.newest_keys |= head.newest_keys
        self.last = checkpoint.last
        self.unordered = checkpoint.unordered or head.unordered
        self.totals, self.total, self.resumed = set(head.totals), head.total, True
        self.shrank = head.shrank or checkpoint.shrank
        self.pages, self.records = head.pages, head.records
        self.top = head.top or checkpoint.newest

    def doubt(self, ending: Ending, *, strict: bool, noun: str) -> str | None:
        """Why a pass over shifting pages may have missed an item, or None.

        An item removed from a page already read pulls an unread one up onto it, where the pass
        never looks; the list's size then changes under the pass. Counts alone prove nothing
        (the removed one was read), so both the size and the distinct items are checked.
        `strict` (a full read, which may end in ACTIVATE_VERSION) takes any change of size as
        a doubt; otherwise only a shrink that `shrank` could not rule out is one, so that a
        first walk on a busy application, where items only come, still ends.
        """
        if strict and len(self.totals) > 1:
            sizes = ", ".join(str(total) for total in sorted(self.totals))
            return f"the list's size (meta.totalCount) changed during the walk ({sizes})"
        if not strict and self.shrank:
            return (
                f"{self.shrank}, and an unread one of the {noun} may have moved onto a page "
                "already read"
            )
        if (
            ending is Ending.END
            and not self.resumed
            and len(self.totals) == 1
            and self.total != self.read
        ):
            return (
                f"{self.read} distinct {noun} were read but the list's size "
                f"(meta.totalCount) is {self.total}"
            )
        return None

    def estimate(self, elapsed: float) -> float | None:
        """Seconds left, from how fast the pass moves back in time, when that can be told."""
        if not (self.floor and self.top and self.floor < self.last < self.top):
            return None
        top, last, floor = (datetime.fromisoformat(v) for v in (self.top, self.last, self.floor))
        return elapsed * (last - floor).total_seconds() / (top - last).total_seconds()


@dataclass
class DryRun:
    """A record limit shared by a stream's partitions (`--test`), or none."""

    limit: int | None
    emitted: int = 0

    @property
    def done(self) -> bool:
        """Whether the limit is reached."""
        return self.limit is not None and self.emitted >= self.limit

    def take(self, records: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
        """The records still within the limit (all of them without one)."""
        if self.limit is None:
            return records
        records = records[: self.limit - self.emitted]
        self.emitted += len(records)
        return records


class Source(t.Protocol):
    """What a walk needs from its stream."""

    @property
    def name(self) -> str:
        """The stream's name."""

    @property
    def logger(self) -> logging.Logger:
        """The stream's logger."""

    def fetch(self, context: t.Any, token: str | None) -> Page:
        """Request and parse one page, retried as the failure policy says."""

    def write_state(self) -> None:
        """Write a STATE message with the partition's state as it is now."""


@dataclass(frozen=True)
class Course:
    """What a stream's walks share: its paging and fields, and the run's settings and start."""

    paging: Paging
    stamp: str | None
    """The replication key (newest first), or None for a list read whole every time."""
    api_version: str
    page_size: int
    start_date: str
    started: str
    """The run's start: no bookmark moves past it."""
    setting: str
    """The setting holding the list's URL: a 400 from there refuses a resumed page token."""
    dedupe: Callable[[t.Mapping[str, t.Any]], int] = hash
    """An item's primary key as a number (what a target upserts on), where pages shift."""
    key: Callable[[t.Mapping[str, t.Any]], str] = key_digest
    """What the state keeps of an item at the bookmark instant (ties)."""


class Walk:
    """One partition's read: resume, passes, rereads, and what the state keeps of them.

    `records()` yields the partition's records and returns whether the read was complete (read
    to the last page, trusted, not a dry run): only then may ACTIVATE_VERSION follow.
    """

    def __init__(
        self,
        source: Source,
        course: Course,
        context: t.Any,
        state: dict[str, t.Any] | None,
        *,
        settles: bool,
        dry_run: DryRun,
        clock: Clock,
        count: Callable[[], None],
    ) -> None:
        """Prepare the walk of partition `context`.

        Args:
            source: The stream: fetches pages, writes STATE.
            course: The stream's paging, fields and the run's settings.
            context: The partition.
            state: The partition's state, for an incremental stream; else None.
            settles: Whether the walk may checkpoint and move the bookmark (not in a dry run).
            dry_run: The stream's record limit.
            clock: The run's clock (progress lines).
            count: Counts one request (the SDK's `http_request_count` metric).
        """
        self.source, self.course, self.context = source, course, context
        self.state, self.settles = state, settles and state is not None
        self.dry_run, self.clock, self.count = dry_run, clock, count
        self.label = " ".join(
            [source.name.capitalize(), *([json.dumps(context)] if context else [])]
        )
        """The partition, as messages name it: `Connections {"mode": "live"}`, `Webhooks`."""
        self.subject = "this mode" if isinstance(context, dict) and "mode" in context else "it"
        """How messages name the partition: modes are what a user configures."""
        self.seen: dict[int, int] | None = {} if course.paging.shifts else None
        """Where pages shift, per primary key read in the run: `id << 8 | pass << 1 | sent`."""
        self.others: dict[int, int] = {}
        """Items read under a key whose first item was another (see `_note`): id -> pass."""
        self.passes = 0
        if state is not None and not self.settles:
            state = self.state = copy.deepcopy(state)  # a dry run's reading changes nothing
        if state is not None:
            self._distrust(state)
        self.floor, self.skip = self._floor()
        self.checkpoint = self._checkpoint() if self.settles else None

    def records(self) -> Generator[dict[str, t.Any], None, bool]:
        """Yield the partition's records, newest first, down to the floor; see the module."""
        checkpoint, ending, current = self.checkpoint, Ending.END, None
        for attempt in range(REREADS + 1):
            current = self._pass(self.floor, self.skip)
            resumed = None
            if checkpoint is not None:
                resumed = yield from self._resume(current, checkpoint)
                checkpoint = None
            ending = resumed or (yield from self._read(current, None))
            if ending is Ending.CUT:
                return False
            doubt = current.doubt(ending, strict=not self.settles, noun=self.source.name)
            if doubt is None or attempt == REREADS:
                break
            self.source.logger.warning(
                "%s: %s, so an item may have been skipped: reading %s again (%d of %d)",
                self.label,
                doubt,
                self.subject,
                attempt + 1,
                REREADS,
            )
        assert current is not None
        return self._finish(current, ending, doubt)

    def _pass(self, floor: str, skip: frozenset[str]) -> Pass:
        self.passes += 1
        now = self.clock.monotonic()
        return Pass(floor, skip, self.passes, began=now, logged=now)

    def _finish(self, current: Pass, ending: Ending, doubt: str | None) -> bool:
        """Settle a walk that can be trusted; otherwise say so, and keep the bookmark."""
        if doubt is not None:
            self.source.logger.warning(
                "%s: %s on every one of %d reads: %s. The next run reads it again",
                self.label,
                doubt,
                REREADS + 1,
                "the bookmark stays where it was"
                if self.settles
                else "no ACTIVATE_VERSION is sent, so the target deletes nothing",
            )
        if self.settles and self.state is not None:
            self.state.pop("checkpoint", None)
            if doubt is None:
                self._settle(self.state, current)
            self.source.write_state()
        self._log_progress(current, done=True)
        return doubt is None and ending is Ending.END and self.dry_run.limit is None

    def _resume(
        self, current: Pass, checkpoint: Checkpoint
    ) -> Generator[dict[str, t.Any], None, Ending | None]:
        """Read the new head down to the checkpoint's newest instant, then go on from its page.

        Whatever the head did (even reach the last page, out of order or on a shrunken list),
        what lies below the checkpoint's newest instant is only read from its page.

        Returns:
            How the walk ended, or None if the checkpoint does not fit the list and the
            partition must be read from the top.
        """
        head = self._pass(checkpoint.newest, frozenset(checkpoint.newest_keys))
        ending = yield from self._read(head, None, keep=False)
        current.absorb(head, checkpoint)
        if ending is Ending.CUT:
            return ending
        try:
            if self.course.paging.shifts and current.unordered:
                msg = "the list is not newest first, so a page number does not say where it was"
                raise StaleCheckpoint(msg)
            saved = Saved(checkpoint.cursor, checkpoint.total, head.records, head.total)
            token = self.course.paging.resume(saved, self.course.page_size)
            return (yield from self._read(current, token, resume_from=checkpoint.last))
        except StaleCheckpoint as exc:
            self.source.logger.warning(
                "The checkpoint for %s cannot be used (%s): reading %s from the top again, "
                "bookmark unchanged",
                json.dumps(self.context),
                exc,
                self.subject,
            )
            current.last, current.unordered, current.resumed = "", head.unordered, False
            return None

    def _read(
        self, current: Pass, token: str | None, *, resume_from: str = "", keep: bool = True
    ) -> Generator[dict[str, t.Any], None, Ending]:
        """Read pages from `token` down to the pass's floor, checkpointing after each.

        Args:
            current: The pass to read and update.
            token: Where to start; None for the first page.
            resume_from: Resuming: the last instant read before the interruption.
            keep: Whether to checkpoint (not while reading a resumed walk's head).

        Raises:
            StaleCheckpoint: If resuming and the first page shows the checkpoint does not fit.
        """
        guard = PagingGuard(self.label)
        above = ""
        while True:
            if self.dry_run.done:
                return Ending.CUT  # a dry run stops here, without the SDK's abort (an error)
            page = self._fetch(token, resumed=bool(resume_from))
            if resume_from:
                above = self.course.paging.check_resumed(page, resume_from, self._stamp)
                resume_from = ""
            self.count()
            current.pages += 1
            self._note_total(current, page, above)
            if self.course.stamp and not page.ordered and not current.unordered:
                current.unordered = True
                self._warn_unordered(current.pages, "", "")
            records = self.dry_run.take(page.records)
            reached, fresh, above = yield from self._emit(current, records, above)
            if self.dry_run.done:
                return Ending.CUT
            if page.next is None:
                return Ending.END
            if reached and not current.unordered:
                return Ending.FLOOR
            token = page.next
            guard.check(token, fresh, current.pages)
            if keep and self.settles and current.newest:
                self._checkpoint_at(current, token)
            self._log_progress(current)

    @property
    def _stamp(self) -> str:
        return self.course.stamp or ""

    def _fetch(self, token: str | None, *, resumed: bool) -> Page:
        """Fetch a page; a 400 on a resumed walk's first page means its token expired.

        Raises:
            StaleCheckpoint: For that 400.
        """
        try:
            return self.source.fetch(self.context, token)
        except Refused as exc:
            if resumed and exc.status == 400 and exc.setting == self.course.setting:
                raise StaleCheckpoint(f"the API refused its page token: {exc}") from exc
            raise

    def _note_total(self, current: Pass, page: Page, above: str) -> None:
        """Keep the list's size, and note a shrink that the next page does not explain."""
        if page.total is None:
            return
        if current.total is not None and page.total < current.total and not current.shrank:
            first = page.records[0] if page.records else None
            moved_down = first is not None and (
                (above and first[self._stamp] > above) or self._read_in(current, first)
            )
            if not moved_down:
                current.shrank = (
                    f"meta.totalCount fell from {current.total} to {page.total} before page "
                    f"{current.pages}"
                )
        current.totals.add(page.total)
        current.total = page.total

    def _read_in(self, current: Pass, record: dict[str, t.Any]) -> bool:
        """Whether `record` (this very item, by its own id) was already read in `current`."""
        if self.seen is None:
            return False
        code = self.seen.get(self.course.dedupe(record))
        ident = self.course.paging.identity(record) & IDENTITY_MASK
        if code is not None and code >> 8 == ident:
            return (code >> 1) & 0x7F == current.number
        return self.others.get(ident) == current.number

    def _note(self, current: Pass, record: dict[str, t.Any]) -> tuple[bool, bool, int]:
        """Note that `record` was read in `current`, where pages shift.

        Per primary key (what a target upserts on) the run keeps the first item read under it
        (its own id), the pass that last read it and whether the key was sent: an item is sent
        once per run, and no later connection under a key already sent replaces the newer one
        in the target. The rare other items under a key read before are kept by their own id
        (`others`), so that each counts, once, against `meta.totalCount`.

        Returns:
            Whether the item is new to the pass, whether its key was sent, and the key.
        """
        assert self.seen is not None
        item = self.course.dedupe(record)
        ident = self.course.paging.identity(record) & IDENTITY_MASK
        code = self.seen.get(item)
        if code is None or code >> 8 == ident:
            new = code is None or (code >> 1) & 0x7F != current.number
            sent = code is not None and bool(code & 1)
            self.seen[item] = ident << 8 | current.number << 1 | sent
        else:
            new = self.others.get(ident) != current.number
            sent = bool(code & 1)
            self.others[ident] = current.number
        current.read += new
        return new, sent, item

    def _emit(
        self, current: Pass, records: list[dict[str, t.Any]], above: str
    ) -> Generator[dict[str, t.Any], None, tuple[bool, int, str]]:
        """Yield what the pass sends of one page's records, noting order, ties and the newest.

        Returns:
            Whether an item below the floor was reached, how many items were new to the pass
            (every item, where pages do not shift), and what is still to be skipped above a
            resumed walk's last instant.
        """
        stamp_field, seen = self._stamp, self.seen
        floor, skip, started = current.floor, current.skip, self.course.started
        previous, newest, keys = current.last, current.newest, current.newest_keys
        reached, fresh = False, 0 if seen is not None else len(records)
        for record in records:
            stamp = record[stamp_field] if stamp_field else ""
            if seen is not None:
                new, sent, item = self._note(current, record)
                fresh += new
            if above:
                if stamp > above:
                    continue  # read before the interruption, shifted down since
                above = ""
            if stamp > previous and previous and not current.unordered:
                current.unordered = True
                self._warn_unordered(current.pages, stamp, previous)
            previous = stamp
            if stamp < floor:
                reached = True
                continue
            key = self.course.key(record) if stamp == floor and skip else ""
            if key and key in skip:
                continue
            if stamp > started:
                self._warn_future(record, stamp)
            elif stamp and stamp >= newest:
                if stamp > newest:
                    newest, keys = stamp, set()
                keys.add(key or self.course.key(record))
            if seen is not None:
                seen[item] |= 1
                if sent:
                    continue
            current.records += 1
            yield record
        current.last, current.newest, current.newest_keys = previous, newest, keys
        current.top = current.top or (records[0][stamp_field] if records and stamp_field else "")
        return reached, fresh, above

    def _checkpoint_at(self, current: Pass, token: str) -> None:
        """Save where the walk goes on from `token`, and write it out as STATE.

        Not where pages shift and the order broke: a page number then says nothing about
        where the walk was.
        """
        if self.course.paging.shifts and current.unordered:
            return
        assert self.state is not None
        self.state["checkpoint"] = Checkpoint(
            cursor=token,
            newest=current.newest,
            newest_keys=sorted(current.newest_keys),
            last=current.last,
            floor=current.floor,
            page_size=self.course.page_size,
            unordered=current.unordered,
            total=current.total,
            shrank=current.shrank,
        ).dump()
        self.source.write_state()

    def _settle(self, state: dict[str, t.Any], current: Pass) -> None:
        """After a complete walk: move the bookmark and keep the keys sent at its instant."""
        if current.newest > current.floor:
            state["replication_key"] = self.course.stamp
            state["replication_key_value"] = current.newest
            state["keys_at_bookmark"] = sorted(current.newest_keys)
        elif current.newest and current.newest == current.floor:
            state["keys_at_bookmark"] = sorted(current.skip | current.newest_keys)

    def _distrust(self, state: dict[str, t.Any]) -> None:
        """Drop from the partition's state a bookmark that cannot be trusted, saying why.

        A bookmark made under the other API version belongs to another list; one after the
        run's start can only come from bad data (or an older release that let a future-dated
        connection set it), and trusting it would skip every real connection.
        """
        course = self.course
        made_under = state.get("api_version", "v2")
        mark = state.get("replication_key_value")
        if made_under != course.api_version:
            reason = f"was made under API {one_line(made_under, 10)}, not {course.api_version}"
        elif isinstance(mark, str) and normalize_timestamp(mark) > course.started:
            reason = f"is {normalize_timestamp(mark)}, after this run started ({course.started})"
        else:
            return
        if mark or state.get("checkpoint"):
            self.source.logger.warning(
                "The bookmark for %s %s: reading %s afresh (once) from %s",
                json.dumps(self.context),
                reason,
                self.subject,
                course.start_date or "the beginning",
            )
        for name in ("replication_key_value", "keys_at_bookmark", "checkpoint"):
            state.pop(name, None)
        if course.api_version == "v2":
            state.pop("api_version", None)
        else:
            state["api_version"] = course.api_version

    def _floor(self) -> tuple[str, frozenset[str]]:
        """Where the walk stops, and the keys already sent at that instant.

        The floor is the later of the bookmark and `start_date` (what the SDK starts from), or
        "" to read to the last page; the keys count only when it is the bookmark.
        """
        if self.course.stamp is None or self.state is None:
            return "", frozenset()
        mark = self.state.get("replication_key_value")
        bookmark = normalize_timestamp(mark) if mark else ""
        floor = max(bookmark, self.course.start_date)
        keys = self.state.get("keys_at_bookmark")
        if not bookmark or floor != bookmark or not isinstance(keys, list):
            return floor, frozenset()
        return floor, frozenset(key for key in keys if isinstance(key, str))

    def _checkpoint(self) -> Checkpoint | None:
        """The partition's checkpoint, if it was made for this floor and `page_size`."""
        saved = (self.state or {}).get("checkpoint")
        if self.state is None or saved is None:
            return None
        checkpoint = Checkpoint.load(saved, self.floor, self.course.page_size, self.course.started)
        if checkpoint is None:
            self.source.logger.warning(
                "Ignoring the checkpoint for %s: it was made for another bookmark or "
                "page_size, or is malformed. Reading %s from the top, bookmark unchanged",
                json.dumps(self.context),
                self.subject,
            )
            self.state.pop("checkpoint", None)
        return checkpoint

    def _warn_future(self, record: dict[str, t.Any], stamp: str) -> None:
        self.source.logger.warning(
            "The connection of vehicle %s is dated %s, after this run started (%s): emitted, "
            "but not used as the bookmark. Check the clock, or report it to Smartcar",
            record.get("vehicleId"),
            stamp,
            self.course.started,
        )

    def _warn_unordered(self, page: int, stamp: str, before: str) -> None:
        why = (
            f"page {page} has {stamp} after {before}"
            if stamp
            else "the API does not say so: meta.orderDirection is not desc, or meta.orderBy is "
            "not the creation date"
        )
        self.source.logger.warning(
            "Smartcar API pages for %s are not newest first (%s): reading %s to its last "
            "page instead of stopping at the bookmark",
            json.dumps(self.context),
            why,
            self.subject,
        )

    def _log_progress(self, current: Pass, *, done: bool = False) -> None:
        """One INFO line about the pass, at most every `PROGRESS_SECONDS` (and at its end)."""
        now = self.clock.monotonic()
        if not done and now - current.logged < PROGRESS_SECONDS:
            return
        current.logged = now
        elapsed = max(now - current.began, 1e-3)
        estimate = current.estimate(elapsed)
        self.source.logger.info(
            "%s %s: %d pages, %d %s, read back to %s (stops at %s), %.1f requests/min%s",
            self.label,
            "finished" if done else "in progress",
            current.pages,
            current.records,
            self.source.name,
            current.last or "-",
            current.floor or "the beginning",
            current.pages / elapsed * 60,
            f", about {estimate / 60:.0f} min left" if estimate is not None and not done else "",
        )
