"""Throughput of the multiplexer's sans-I/O merge state machine alone.

Measuring ``OutputMerger`` without sockets tells how much of the end-to-end
stream figure is the merge itself versus ZMQ, (de)serialisation and signing.
Ranks flush every 10 ms, so a flood arrives as messages of many lines; the
figure feeds 4 ranks round-robin with 50-line messages, as ``print(i)`` in a
loop produces, and drains every output.
"""

from __future__ import annotations


def bench_merge_core() -> float | None:
    """Merged lines per second (an exception renders as "failed: ..." in the report)."""
    import time

    from nbdist_provisioner.mux.core.output.merger import OutputMerger

    ranks, lines_per_msg, messages = 4, 50, 20_000
    merger = OutputMerger({r: f"[rank {r}] " for r in range(ranks)})
    merger.start("cell", tuple(range(ranks)))
    chunks = ["".join(f"{i}\n" for i in range(k, k + lines_per_msg))
              for k in range(0, 100_000, lines_per_msg)]
    start = time.perf_counter()
    now = 0.0
    emitted = 0
    for i in range(messages):
        now += 0.0001
        out = merger.feed(i % ranks, "stream", {"name": "stdout", "text": chunks[i % len(chunks)]},
                          "cell", now)
        emitted += len(out)
    emitted += len(merger.finish("cell", now))
    elapsed = time.perf_counter() - start
    assert emitted >= messages
    return messages * lines_per_msg / elapsed


if __name__ == "__main__":
    # Run in a child process by the harness: a clean process to measure in, and
    # a hook that hangs can be killed (a thread could not).
    import json

    print(json.dumps({"lines_per_s": bench_merge_core()}))
