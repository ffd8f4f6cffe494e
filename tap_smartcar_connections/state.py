"""What a state given to the tap must look like before anything is requested.

A bad bookmark would otherwise crash mid-run with a traceback or, worse, silently re-read
history. What a walk trusts of a well-formed state (a checkpoint that fits, a bookmark not in
the future) is the walk's to decide (`walk.py`).
"""

from __future__ import annotations

import json
import typing as t

from tap_smartcar_connections.errors import StateError
from tap_smartcar_connections.timestamps import normalize_timestamp


def check_state(state: t.Any) -> None:
    """Check that `state` has the shape the SDK expects and that bookmarks are timestamps.

    Every stream's entry is checked, whether or not the tap reads that stream in this run.

    Raises:
        StateError: Naming the first part that is wrong.
    """
    if not isinstance(state, dict):
        msg = "the state is not a JSON object"
        raise StateError(msg)
    bookmarks = {} if state.get("bookmarks") is None else state["bookmarks"]
    if not isinstance(bookmarks, dict):
        msg = "its 'bookmarks' is not a JSON object"
        raise StateError(msg)
    for stream, entry in bookmarks.items():
        name = stream if stream.isidentifier() else json.dumps(stream)
        if not isinstance(entry, dict):
            msg = f"the bookmarks of stream {json.dumps(stream)} are not a JSON object"
            raise StateError(msg)
        partitions = entry.get("partitions", [])
        if not isinstance(partitions, list) or not all(
            isinstance(p, dict) and isinstance(p.get("context", {}), dict) for p in partitions
        ):
            msg = f"the {name} 'partitions' is not a list of objects with a 'context' object"
            raise StateError(msg)
        for part in [entry, *partitions]:
            _check_bookmark(name, part)
            if not isinstance(part.get("progress_markers", {}), dict):
                msg = f"the {name} 'progress_markers' is not a JSON object"
                raise StateError(msg)


def _check_bookmark(stream: str, entry: dict[str, t.Any]) -> None:
    """A bookmark, where there is one, must be a timestamp.

    Raises:
        StateError: Naming the stream and partition.
    """
    value = entry.get("replication_key_value")
    if value is None:
        return
    try:
        normalize_timestamp(value)
    except ValueError:
        where = json.dumps(entry.get("context") or "stream")
        shown = json.dumps(value)[:80]
        msg = f"the {stream} bookmark for {where} is {shown}, not a timestamp"
        raise StateError(msg) from None
