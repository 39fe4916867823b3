"""HOOK: throughput of the multiplexer's sans-I/O merge state machine alone.

>>> FILL IN ``bench_merge_core`` <<<  (left for the package author)

DESIGN.md keeps the merge logic a pure state machine that takes
(rank, message) events and returns the messages to publish. Measuring it
without sockets tells how much of the end-to-end stream figure is the merge
itself versus ZMQ, (de)serialisation and signing. Suggested body: build the
state machine for 4 ranks, open one execute request, feed N stream events of
one line each (round-robin over ranks, like ``print(i)``), drain its output,
and return N / elapsed seconds.
"""

from __future__ import annotations


def bench_merge_core() -> float | None:
    """Return merged lines per second, or None while not implemented.

    None renders as "n/a" in the report; an exception renders as
    "failed: <exception>" and does not stop the run.
    """
    return None


if __name__ == "__main__":
    # Run in a child process by the harness: a clean process to measure in, and
    # a hook that hangs can be killed (a thread could not).
    import json

    print(json.dumps({"lines_per_s": bench_merge_core()}))
