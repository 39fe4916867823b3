"""The first completion on fresh ranks is answered quickly (issue 9 point 7): JupyterLab drops
a completion reply that takes longer than about 1 s, and the goal is 0.3 s. ``-s`` prints
the measured times (``FIGURE ...``)."""

from __future__ import annotations

import time

import pytest

from kernel_harness import reply_to, run_cell

#: what the test asserts: JupyterLab's own limit. The goal (0.3 s) is reported, not asserted:
#: on a shared, loaded 2-core machine a single request can take longer for reasons of its own
LIMIT = 1.0
GOAL = 0.3


def complete(kc, code: str) -> tuple[float, dict]:
    started = time.perf_counter()
    msg_id = kc.complete(code, len(code))
    reply = reply_to(kc, msg_id, timeout=60)
    return time.perf_counter() - started, reply["content"]


@pytest.mark.parametrize("spec", ["nbdist-test-4", "nbdist-test-4-torch"])
def test_first_completion_after_start_is_quick(start_kernel, spec):
    k = start_kernel(spec)
    assert run_cell(k.kc, "import os").status == "ok"  # the ranks are up
    seconds, content = complete(k.kc, "os.path.jo")
    assert content["status"] == "ok" and "join" in content["matches"]
    again, content = complete(k.kc, "os.path.ex")
    assert "exists" in content["matches"]
    print(f"FIGURE first completion on {spec}: {seconds * 1e3:.0f} ms (goal "
          f"{GOAL * 1e3:.0f} ms), second {again * 1e3:.0f} ms")
    assert seconds < LIMIT
