"""The multiplexer's publisher path alone: 64 ranks × 64 stream messages per cell.

Rank stream messages go through the request core (re-parenting, the output
merger) and the bounded publish queue, as one event-loop turn of a 64-rank
flood would; no sockets. Reports messages per second and the largest message
the frontend would get (it must stay under the ~1 MiB bound).
"""

from __future__ import annotations


def bench_publish_path(ranks: int = 64, messages: int = 64,
                       lines_per_message: int = 50) -> dict[str, float]:
    import time

    from nbdist_provisioner.mux.core import CoreConfig, KernelCore
    from nbdist_provisioner.mux.core.effects import Publish, SendToRank
    from nbdist_provisioner.mux.core.events import (
        FrontendMessage,
        RankInfo,
        RankMessage,
        RanksReady,
    )
    from nbdist_provisioner.mux.core.output.bounded import PublishQueue

    core = KernelCore(CoreConfig(nproc=ranks), id_prefix="b")
    core.start(0.0)
    core.handle(RanksReady(1, {r: RankInfo() for r in range(ranks)}), 0.0)
    effects = core.handle(FrontendMessage("shell", (b"c",), {
        "msg_id": "cell", "msg_type": "execute_request"}, {"code": "flood()"}), 0.0)
    rank_ids = {e.rank: e.msg_id for e in effects if isinstance(e, SendToRank)}
    text = "".join(f"line {i} of a flooding loop\n" for i in range(lines_per_message))
    queue = PublishQueue()
    largest = 0
    start = time.perf_counter()
    for n in range(messages):
        for rank in range(ranks):
            for e in core.handle(RankMessage(1, rank, "iopub",
                                             {"msg_id": f"{rank}-{n}", "msg_type": "stream"},
                                             {"msg_id": rank_ids[rank]},
                                             {"name": "stdout", "text": text}), 0.001 * n):
                if isinstance(e, Publish):
                    queue.add(e.parent, "cell", e.msg_type, e.content)
    sent = queue.take()
    elapsed = time.perf_counter() - start
    for item in sent:
        largest = max(largest, len(item.content.get("text", "")))
    total = ranks * messages
    return {"messages_per_s": total / elapsed, "seconds": elapsed,
            "frontend_messages": float(len(sent)), "largest_chars": float(largest)}


if __name__ == "__main__":
    import json

    print(json.dumps(bench_publish_path()))
