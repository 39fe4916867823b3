"""The multiplexer's own kernel_info, answerable before any rank is up."""

from __future__ import annotations

import platform
from typing import Any

from ... import __version__

PROTOCOL_VERSION = "5.5"

DEFAULT_LANGUAGE_INFO: dict[str, Any] = {
    "name": "python",
    "version": platform.python_version(),
    "mimetype": "text/x-python",
    "codemirror_mode": {"name": "ipython", "version": 3},
    "pygments_lexer": "ipython3",
    "nbconvert_exporter": "python",
    "file_extension": ".py",
}


def kernel_info_content(nproc: int, language_info: dict[str, Any] | None,
                        rank_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The kernel's kernel_info; ``rank_info`` (the primary rank's own, once it is up) says
    whether the ranks' kernels can debug: then so can this one (one rank at a time)."""
    rank_features = (rank_info or {}).get("supported_features") or []
    debugger = bool((rank_info or {}).get("debugger")) or "debugger" in rank_features
    return {
        "status": "ok",
        "protocol_version": PROTOCOL_VERSION,
        "implementation": "nbdist",
        "implementation_version": __version__,
        "language_info": language_info or DEFAULT_LANGUAGE_INFO,
        "banner": f"nbdist multi-rank kernel: every cell runs on {nproc} ranks "
                  "(%%rank 0 to pick ranks)",
        "help_links": [],
        "debugger": debugger,
        "supported_features": ["kernel subshells", *(["debugger"] if debugger else [])],
    }
