"""ipywidgets Output widgets of the ranks, capturing as each rank means them to.

An Output widget (``with out:``, ``interact``'s result area, ``@out.capture``)
captures by message id: the kernel sets the widget's ``msg_id`` state to the
request it is serving, and the *frontend* hooks the iopub messages with that
parent into the widget. A frontend can only hook ids of requests it sent
itself, and N ranks capturing at once under the cell's one id would all land
in one widget. So the multiplexer does the capturing: it knows which comms are
Output widgets (``_model_name == "OutputModel"``), sees a rank set its widget's
``msg_id`` to that rank's request (capture on) or to ``""`` (off), and while a
capture is on it turns that rank's outputs of that request into the widget's
``outputs`` state (nbformat output dicts, streams joined, ``clear_output``
honoured, bounded), sent to the frontend as a widget state update. The frontend
is always told ``msg_id: ""``, so it never captures on its own. When a capture
ends, the rank's widget gets the outputs too (a frontend syncs them back as
well), so ``out.outputs`` and a later ``out.append_stdout`` see them. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]

#: Characters of outputs one widget keeps; past it the oldest go (a bound, not a feature).
MAX_OUTPUT_CHARS = 1024 * 1024
#: Seconds between two state updates of one widget while outputs stream in.
UPDATE_INTERVAL = 0.05
_CAPTURED = frozenset({"stream", "display_data", "execute_result", "error", "clear_output"})


@dataclass
class _Widget:
    rank: int
    outputs: list[Json] = field(default_factory=list)
    #: the comm_open's message metadata (ipywidgets' protocol version)
    metadata: Json = field(default_factory=dict)
    clear_pending: bool = False
    dirty: bool = False
    last_update: float = float("-inf")
    #: header of the request whose output it captured last (to parent the update)
    parent: str = ""
    #: echo_update messages of our own state sync to expect back from the rank
    echoes: int = 0
    #: it captured something since its capture went on (the rank must be told)
    captured: bool = False


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """Publish the widget's outputs to the frontend (parented to request ``parent``)."""

    comm_id: str
    parent: str
    content: Json
    metadata: Json


@dataclass(frozen=True, slots=True)
class SyncToRank:
    """Tell ``rank``'s widget the outputs it captured, as a frontend would."""

    rank: int
    content: Json
    metadata: Json


class OutputCapture:
    def __init__(self, interval: float = UPDATE_INTERVAL) -> None:
        self._interval = interval
        self._widgets: dict[str, _Widget] = {}
        #: (rank, rank msg_id) -> comm ids capturing it, innermost last
        self._capturing: dict[tuple[int, str], list[str]] = {}
        self._out: list[StateUpdate | SyncToRank] = []

    # -- comm traffic of the ranks -------------------------------------------------------
    def comm_from_rank(self, rank: int, msg_type: str, content: Json, metadata: Json,
                       parent: str, now: float) -> Json | None:
        """A rank's comm message on its way to the frontend: returns what to send instead
        (``msg_id`` always ""), or None to drop it (the echo of our own state sync)."""
        comm_id = str(content.get("comm_id", ""))
        data = content.get("data")
        state = data.get("state") if isinstance(data, dict) else None
        if msg_type == "comm_close":
            self._drop(comm_id)
            return content
        if msg_type == "comm_open":
            if not isinstance(state, dict) or state.get("_model_name") != "OutputModel":
                return content
            self._widgets[comm_id] = _Widget(rank, list(state.get("outputs") or []),
                                             dict(metadata))
        widget = self._widgets.get(comm_id)
        if widget is None or not isinstance(state, dict) or not isinstance(data, dict):
            return content
        if data.get("method") == "echo_update" and set(state) == {"outputs"} and widget.echoes:
            widget.echoes -= 1
            return None
        if "outputs" in state and msg_type == "comm_msg":
            widget.outputs = list(state.get("outputs") or [])
        if "msg_id" in state:
            self._set_capture(comm_id, widget, str(state.get("msg_id") or ""), parent, now)
            state = {**state, "msg_id": ""}
            return {**content, "data": {**data, "state": state}}
        return content

    def _set_capture(self, comm_id: str, widget: _Widget, rank_msg_id: str, parent: str,
                     now: float) -> None:
        for key in [k for k, ids in self._capturing.items()
                    if k[0] == widget.rank and comm_id in ids]:
            self._capturing[key].remove(comm_id)
            if not self._capturing[key]:
                del self._capturing[key]
            # capture off: the frontend sees the final state now, the rank gets it too
            self._update(comm_id, widget, now, force=True)
            if not widget.captured:
                continue
            widget.captured = False
            widget.echoes += 1
            self._out.append(SyncToRank(widget.rank, {
                "comm_id": comm_id, "data": {"method": "update",
                                             "state": {"outputs": list(widget.outputs)},
                                             "buffer_paths": []}}, dict(widget.metadata)))
        if rank_msg_id:
            self._capturing.setdefault((widget.rank, rank_msg_id), []).append(comm_id)
            widget.parent = parent

    # -- outputs of the ranks --------------------------------------------------------------
    def capture(self, rank: int, rank_msg_id: str, msg_type: str, content: Json,
                parent: str, now: float) -> bool:
        """An output of ``rank`` under its request ``rank_msg_id``: True when a widget of
        that rank captures it (it is then not shown in the cell)."""
        ids = self._capturing.get((rank, rank_msg_id))
        if not ids or msg_type not in _CAPTURED:
            return False
        comm_id = ids[-1]
        widget = self._widgets[comm_id]
        widget.parent = parent or widget.parent
        if msg_type == "clear_output":
            if content.get("wait"):
                widget.clear_pending = True
            else:
                widget.outputs, widget.clear_pending = [], False
        else:
            if widget.clear_pending:
                widget.outputs, widget.clear_pending = [], False
            self._append(widget, msg_type, content)
        widget.dirty = widget.captured = True
        self._update(comm_id, widget, now)
        return True

    def tick(self, now: float) -> None:
        for comm_id, widget in self._widgets.items():
            if widget.dirty:
                self._update(comm_id, widget, now)

    def next_deadline(self) -> float | None:
        times = [w.last_update + self._interval for w in self._widgets.values() if w.dirty]
        return min(times) if times else None

    def take(self) -> list[StateUpdate | SyncToRank]:
        out, self._out = self._out, []
        return out

    def clear(self) -> None:
        """The ranks were replaced: their widgets are gone."""
        self._widgets.clear()
        self._capturing.clear()

    # -- internals -----------------------------------------------------------------
    def _append(self, widget: _Widget, msg_type: str, content: Json) -> None:
        outputs = widget.outputs
        if msg_type == "stream":
            name, text = str(content.get("name", "stdout")), str(content.get("text", ""))
            last = outputs[-1] if outputs else None
            if last is not None and last.get("output_type") == "stream" and \
                    last.get("name") == name:
                outputs[-1] = {**last, "text": str(last.get("text", "")) + text}
            else:
                outputs.append({"output_type": "stream", "name": name, "text": text})
        else:
            out = {k: v for k, v in content.items() if k != "transient"}
            out["output_type"] = msg_type
            if msg_type == "execute_result":
                out.setdefault("execution_count", None)
            outputs.append(out)
        self._bound(widget)

    def _bound(self, widget: _Widget) -> None:
        sizes = [len(str(o)) for o in widget.outputs]
        total = sum(sizes)
        while total > MAX_OUTPUT_CHARS and len(widget.outputs) > 1:
            total -= sizes.pop(0)
            widget.outputs.pop(0)
        if total > MAX_OUTPUT_CHARS and widget.outputs:
            last = widget.outputs[-1]
            if last.get("output_type") == "stream":  # keep the tail of one huge stream
                last["text"] = str(last.get("text", ""))[-MAX_OUTPUT_CHARS // 2:]

    def _update(self, comm_id: str, widget: _Widget, now: float, force: bool = False) -> None:
        if not widget.dirty or (not force and now - widget.last_update < self._interval):
            return
        widget.dirty = False
        widget.last_update = now
        self._out.append(StateUpdate(comm_id, widget.parent, {
            "comm_id": comm_id, "data": {"method": "update",
                                         "state": {"outputs": list(widget.outputs)},
                                         "buffer_paths": []}}, dict(widget.metadata)))

    def _drop(self, comm_id: str) -> None:
        self._widgets.pop(comm_id, None)
        for key in [k for k, ids in self._capturing.items() if comm_id in ids]:
            self._capturing[key].remove(comm_id)
            if not self._capturing[key]:
                del self._capturing[key]
