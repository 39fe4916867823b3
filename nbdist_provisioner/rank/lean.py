"""What a rank kernel does not publish, because nobody reads it.

The multiplexer publishes the frontend's ``execute_input`` and ``busy`` itself, and
of a rank's statuses reads only ``idle``. Every message a rank publishes costs it
(serialise, sign, send) and costs the multiplexer (receive, verify, route): at N
ranks, twice per cell and rank. So a rank skips them.
"""

from __future__ import annotations

from typing import Any


def publish_only_what_is_read(kernel: Any) -> None:
    """Skip the rank kernel's ``execute_input`` and ``busy`` messages."""
    publish_status = kernel._publish_status

    def _publish_status(status: str, channel: str, parent: Any = None) -> None:
        if status != "busy":
            publish_status(status, channel, parent)

    kernel._publish_status = _publish_status
    kernel._publish_execute_input = lambda code, parent, execution_count: None
