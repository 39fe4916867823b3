"""MultiRankKernelSpecManager: the display name of a kernelspec installed without --nproc
tells the rank count the provisioner will resolve (Jupyter config > NBDIST_NPROC >
default); other kernelspecs are served unchanged (issue 14 point 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from traitlets.config import Config

from nbdist_provisioner.kernelspecs import MultiRankKernelSpecManager
from nbdist_provisioner.settings import KernelSettings


@pytest.fixture(scope="module")
def kernels_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unsized, a sized and a custom-named multi-rank spec, installed by the real CLI,
    and a plain python kernelspec."""
    prefix = tmp_path_factory.mktemp("ksm")
    for args in (["--name", "unsized"], ["--name", "sized", "--nproc", "3"],
                 ["--name", "custom", "--display-name", "GPU ranks"]):
        subprocess.run([sys.executable, "-m", "nbdist_provisioner.cli", "install",
                        "--prefix", str(prefix), *args], check=True, capture_output=True)
    kernels = prefix / "share" / "jupyter" / "kernels"
    (kernels / "plain").mkdir()
    (kernels / "plain" / "kernel.json").write_text(json.dumps(
        {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "Python 3 (ipykernel)", "language": "python"}))
    return kernels


@pytest.fixture
def no_nproc_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.delenv("NBDIST_NPROC", raising=False)
    yield monkeypatch


def names(kernels_dir: Path, config: Config | None = None) -> dict[str, str]:
    """What /api/kernelspecs would show: display names from get_all_specs."""
    ksm = MultiRankKernelSpecManager(kernel_dirs=[str(kernels_dir)], config=config or Config())
    return {name: info["spec"]["display_name"] for name, info in ksm.get_all_specs().items()}


def test_plain_manager_shows_a_name_without_a_count(kernels_dir, no_nproc_env):
    plain = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    assert plain.get_kernel_spec("unsized").display_name == "Python 3 (multi-rank)"


def test_count_from_default_env_and_config_in_that_precedence(kernels_dir, no_nproc_env):
    default = KernelSettings.nproc
    assert names(kernels_dir)["unsized"] == f"Python 3 (multi-rank, {default} ranks)"
    no_nproc_env.setenv("NBDIST_NPROC", "6")
    assert names(kernels_dir)["unsized"] == "Python 3 (multi-rank, 6 ranks)"
    config = Config({"MultiRankProvisioner": {"nproc": 8}})
    assert names(kernels_dir, config)["unsized"] == "Python 3 (multi-rank, 8 ranks)"


def test_fixed_custom_and_plain_specs_are_unchanged(kernels_dir, no_nproc_env):
    no_nproc_env.setenv("NBDIST_NPROC", "6")
    shown = names(kernels_dir, Config({"MultiRankProvisioner": {"nproc": 8}}))
    assert shown["sized"] == "Python 3 (multi-rank, 3 ranks)"
    assert shown["custom"] == "GPU ranks"
    assert shown["plain"] == "Python 3 (ipykernel)"


def test_bad_env_keeps_the_static_name(kernels_dir, no_nproc_env):
    no_nproc_env.setenv("NBDIST_NPROC", "many")
    assert names(kernels_dir)["unsized"] == "Python 3 (multi-rank)"


def test_installed_spec_has_the_python_logos(kernels_dir):
    for logo in ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg"):
        assert (kernels_dir / "unsized" / logo).stat().st_size > 0
