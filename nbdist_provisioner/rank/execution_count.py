"""Every rank numbers its cells as the kernel does.

A rank that skips cells (``%%rank 0`` elsewhere) or starts later (new ranks
after a death) would otherwise count differently from the others and from the
frontend: tracebacks would say ``Cell In[3]`` on one rank and ``In[7]`` on
another, and identical errors would no longer look identical. The multiplexer
puts the count to use in each execute_request's metadata; this sets it on the
rank's IPython before the cell runs.
"""

from __future__ import annotations

from typing import Any

from ..protocol import EXECUTION_COUNT_KEY


def follow_kernel_execution_count(kernel: Any) -> None:
    """Wrap the rank kernel's execute_request handler to take the kernel's count."""
    handle = kernel.shell_handlers["execute_request"]

    async def execute_request(stream: Any, ident: Any, parent: dict[str, Any]) -> Any:
        count = (parent.get("metadata") or {}).get(EXECUTION_COUNT_KEY)
        if isinstance(count, int) and count > 0 and kernel.shell is not None:
            kernel.shell.execution_count = count
        return await handle(stream, ident, parent)

    kernel.shell_handlers["execute_request"] = execute_request
