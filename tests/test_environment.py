"""The torchrun environment of a rank, checked against what torch and the frameworks read."""

from __future__ import annotations

import pytest

from nbdist_provisioner.launchers.environment import (
    RankPlace,
    local_rank_environment,
    torchrun_environment,
)

#: what torch.distributed.elastic's local agent sets for every worker (run.py docs)
TORCHRUN_NAMES = {
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_NAME", "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING", "OMP_NUM_THREADS",
}


def test_local_rank_gets_the_full_torchrun_set() -> None:
    env = local_rank_environment(2, 4, "127.0.0.1", 29511, "nbdist-ranks-x", {})
    assert set(env) == TORCHRUN_NAMES
    assert env["RANK"] == env["LOCAL_RANK"] == env["ROLE_RANK"] == "2"
    assert env["WORLD_SIZE"] == env["LOCAL_WORLD_SIZE"] == env["ROLE_WORLD_SIZE"] == "4"
    assert (env["GROUP_RANK"], env["GROUP_WORLD_SIZE"]) == ("0", "1")
    assert env["ROLE_NAME"] == "default"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", "29511")
    assert env["TORCHELASTIC_RUN_ID"] == "nbdist-ranks-x"
    assert env["TORCHELASTIC_RESTART_COUNT"] == env["TORCHELASTIC_MAX_RESTARTS"] == "0"
    assert env["OMP_NUM_THREADS"] == "1"
    # not torchrun's 1 (tear the process down): a kernel keeps its ranks and variables
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "2"


def test_agent_store_is_never_set() -> None:
    """TORCHELASTIC_USE_AGENT_STORE=True would make rank 0 a client of an absent store."""
    env = local_rank_environment(0, 2, "127.0.0.1", 1, "r", {"TORCHELASTIC_USE_AGENT_STORE": "1"})
    assert "TORCHELASTIC_USE_AGENT_STORE" not in env


def test_inherited_thread_and_nccl_settings_win() -> None:
    env = local_rank_environment(0, 2, "h", 1, "r",
                                 {"OMP_NUM_THREADS": "8", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3"})
    assert env["OMP_NUM_THREADS"] == "8"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"


def test_multi_node_place() -> None:
    env = torchrun_environment(RankPlace(rank=5, world_size=8, local_rank=1, local_world_size=4,
                                         group_rank=1, group_world_size=2), "n0", 2, "job", {})
    assert (env["RANK"], env["LOCAL_RANK"], env["GROUP_RANK"], env["GROUP_WORLD_SIZE"]) == (
        "5", "1", "1", "2")


@pytest.mark.parametrize("place", [
    dict(rank=4, world_size=4, local_rank=0, local_world_size=4),
    dict(rank=0, world_size=4, local_rank=4, local_world_size=4),
    dict(rank=0, world_size=4, local_rank=0, local_world_size=4, group_rank=1),
])
def test_impossible_places_are_refused(place: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RankPlace(**place)


def test_empty_run_id_is_refused() -> None:
    with pytest.raises(ValueError, match="run_id"):
        local_rank_environment(0, 1, "h", 1, "", {})


def test_torch_and_lightning_detect_an_elastic_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real detectors, reading the real variables: no launcher of their own is started."""
    import torch.distributed as dist
    from lightning.fabric.plugins.environments import TorchElasticEnvironment

    for name in TORCHRUN_NAMES:
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_torchelastic_launched()
    for name, value in local_rank_environment(1, 2, "127.0.0.1", 1234, "r", {}).items():
        monkeypatch.setenv(name, value)
    assert dist.is_torchelastic_launched()
    assert TorchElasticEnvironment.detect()
    elastic = TorchElasticEnvironment()
    assert elastic.creates_processes_externally
    assert (elastic.global_rank(), elastic.world_size(), elastic.node_rank()) == (1, 2, 0)
