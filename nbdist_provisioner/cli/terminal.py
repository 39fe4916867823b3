"""What ``nbdist run`` shows in a terminal while a notebook runs.

Printed lines go out as they come, rank-labelled by the kernel. The kernel's live
progress display (one line per rank, ``metadata["nbdist"]["progress"]``) is redrawn
in place at the bottom of a terminal, below the printed lines, as tqdm does with
lines printed while its bar runs; once all its bars ended (the kernel's ``live`` is
false) it stays where it is and what follows goes below it, as in the notebook.
Without a terminal (a pipe, a log file) only its last state is written, as plain
lines, when it ends, so logs are not flooded with redraws. Rich outputs are shown
by their ``text/plain`` (the kernel labels it).
"""

from __future__ import annotations

from typing import Any, TextIO

_UP_AND_CLEAR = "\x1b[{n}F\x1b[J"  # cursor up n lines to column 1, clear to the end


class TerminalView:
    """Writes one kernel's output messages to a terminal (or a log), as they come."""

    def __init__(self, out: TextIO, err: TextIO, live: bool, width: int = 0) -> None:
        self.out = out
        self.err = err
        #: terminal columns: a longer bar line is cut, so each takes one line to redraw
        self.width = width
        #: redraw progress in place (stderr is a terminal, and stdout the same one)
        self.live = live
        self._block: str | None = None  # display id of the live progress block
        self._text = ""
        self._running = False  # some bar of the block still runs
        self._drawn = 0  # lines of the block on screen

    @classmethod
    def for_terminal(cls, out: TextIO, err: TextIO) -> TerminalView:
        import shutil

        live = _isatty(err) and _isatty(out)
        return cls(out, err, live, shutil.get_terminal_size().columns if live else 0)

    def message(self, msg: dict[str, Any]) -> None:
        msg_type, content = msg["msg_type"], msg["content"]
        if msg_type == "stream":
            self._write(self.err if content.get("name") == "stderr" else self.out,
                        str(content.get("text", "")))
        elif msg_type in ("display_data", "update_display_data", "execute_result"):
            nbdist = (content.get("metadata") or {}).get("nbdist") or {}
            text = str((content.get("data") or {}).get("text/plain", ""))
            if nbdist.get("progress"):
                self._progress(str((content.get("transient") or {}).get("display_id", "")),
                               text, bool(nbdist.get("live", True)))
            elif msg_type != "update_display_data" and text:
                self._write(self.out, text + "\n")
        elif msg_type == "error":
            tb = content.get("traceback") or [f"{content.get('ename')}: {content.get('evalue')}"]
            self._write(self.err, "\n".join(str(line) for line in tb) + "\n")
        elif msg_type == "status" and content.get("execution_state") == "idle":
            self.cell_done()

    def cell_done(self) -> None:
        """The cell ended: its last progress stays as it is."""
        self._end_block()

    # -- internals -------------------------------------------------------------------
    def _write(self, stream: TextIO, text: str) -> None:
        if not text:
            return
        if not self._running:
            self._end_block()  # its bars ended: it stays above what follows
        if self.live and self._drawn:
            self._erase()
            stream.write(text)
            stream.flush()
            self._draw()
        else:
            stream.write(text)
            stream.flush()

    def _progress(self, display_id: str, text: str, running: bool) -> None:
        if display_id != self._block:
            self._end_block()
            self._block = display_id
        self._running = running
        if self.live and self.width > 1:
            text = "\n".join(line[:self.width - 1] for line in text.split("\n"))
        self._text = text
        if self.live:
            self._erase()
            self._draw()

    def _end_block(self) -> None:
        if self._block is None:
            return
        if not self.live and self._text:
            self.err.write(self._text + "\n")
            self.err.flush()
        self._block, self._text, self._drawn, self._running = None, "", 0, False

    def _erase(self) -> None:
        if self._drawn:
            self.err.write(_UP_AND_CLEAR.format(n=self._drawn))

    def _draw(self) -> None:
        if self._text:
            self.err.write(self._text + "\n")
        self._drawn = self._text.count("\n") + 1 if self._text else 0
        self.err.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
