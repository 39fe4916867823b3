"""torch.distributed set-up inside one rank, done before the first cell runs."""

from __future__ import annotations

import os
import traceback
from datetime import timedelta
from typing import Any


def env_int(name: str, default: int = 0) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def rank_namespace() -> dict[str, Any]:
    """Names every rank has, torch or not."""
    return {
        "rank": env_int("RANK"),
        "world_size": env_int("WORLD_SIZE", 1),
        "local_rank": env_int("LOCAL_RANK"),
    }


def choose_backend(requested: str, torch: Any, local_world_size: int) -> str:
    """``auto`` means nccl when every local rank can have a GPU of its own."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world_size:
        return "nccl"
    return "gloo"


def init_distributed(
    backend: str, init_process_group: bool, collective_timeout: float,
    init_method: str = "env://",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Initialise torch.distributed if asked; return (user namespace, report).

    ``init_method`` is where the ranks meet: a ``file://`` store in the kernel's
    private directory for ranks on this host (no port to race for, nothing listening
    on the network), else ``env://`` (MASTER_ADDR/MASTER_PORT).

    Never raises: a failure is reported back to the multiplexer, which tells
    the user once, and the kernel stays usable with the environment variables.
    """
    ns = rank_namespace()
    report: dict[str, Any] = {"torch": None, "initialized": False, "backend": None,
                              "device": "cpu", "error": None}
    if not init_process_group:
        return ns, report
    try:
        import torch
        import torch.distributed as dist
    except ImportError as err:
        report["error"] = f"torch is not installed ({err}); ranks have RANK/WORLD_SIZE only"
        return ns, report
    report["torch"] = torch.__version__
    local_world_size = env_int("LOCAL_WORLD_SIZE", 1)
    try:
        chosen = choose_backend(backend, torch, local_world_size)
        if chosen == "nccl":
            device = torch.device("cuda", ns["local_rank"])
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        kwargs: dict[str, Any] = {"backend": chosen, "init_method": init_method,
                                  "timeout": timedelta(seconds=collective_timeout)}
        if not init_method.startswith("env://"):
            kwargs.update(rank=ns["rank"], world_size=ns["world_size"])
        if chosen == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
        report.update(initialized=True, backend=chosen, device=str(device))
        ns.update(device=device, dist=dist, torch=torch)
    except Exception as err:  # reported to the user by the multiplexer
        report["error"] = "".join(traceback.format_exception_only(type(err), err)).strip()
        ns.update(dist=dist, torch=torch, device=torch.device("cpu"))
    return ns, report
