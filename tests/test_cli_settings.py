"""`nbdist install` as a subprocess; settings validation; the provisioner's precedence
(kernel.json config > Jupyter config > NBDIST_* environment > defaults); rank specs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.provisioning import KernelProvisionerFactory
from traitlets.config import Config, LoggingConfigurable

from nbdist_provisioner.provisioner import MultiRankProvisioner, ProvisionerConfigError
from nbdist_provisioner.rankset import RankSetError, format_ranks, parse_rank_set
from nbdist_provisioner.settings import (
    SETTINGS_ENV,
    KernelSettings,
    SettingsError,
    declared,
    env_var,
    parse_env_value,
    settings_table,
)

BIN = Path(sys.executable).parent


def nbdist(*args: str, script: str = "nbdist") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / script), *args], capture_output=True, text=True,
                          timeout=60)


def spec_json(prefix: Path, name: str) -> dict:
    return json.loads((prefix / "share" / "jupyter" / "kernels" / name / "kernel.json")
                      .read_text())


# --- nbdist install -------------------------------------------------------------------


def test_install_writes_a_spec_for_the_provisioner(tmp_path):
    done = nbdist("install", "--nproc", "3", "--name", "my-ranks",
                  "--display-name", "Three ranks", "--prefix", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "my-ranks" in done.stdout and "Three ranks" in done.stdout
    spec = spec_json(tmp_path, "my-ranks")
    assert spec["argv"] == [sys.executable, "-m", "nbdist_provisioner.mux",
                            "-f", "{connection_file}"]
    assert spec["display_name"] == "Three ranks"
    assert spec["language"] == "python"
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "nbdist-provisioner", "config": {"nproc": 3}}
    # jupyter_client finds it, and its provisioner is ours
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "share" / "jupyter" / "kernels")])
    found = ksm.get_kernel_spec("my-ranks")
    assert KernelProvisionerFactory.instance().is_provisioner_available(found)


def test_install_defaults_and_options(tmp_path):
    done = nbdist("install", "--nproc", "2", "--backend", "gloo", "--no-init-process-group",
                  "--prefix", str(tmp_path))
    assert done.returncode == 0, done.stderr
    spec = spec_json(tmp_path, "multi-rank")
    assert spec["display_name"] == "Python 3 (multi-rank, 2 ranks)"
    assert spec["metadata"]["kernel_provisioner"]["config"] == {
        "nproc": 2, "backend": "gloo", "init_process_group": False}
    # without --nproc the rank count is left to the Jupyter config / NBDIST_NPROC
    done = nbdist("install", "--name", "sized-later", "--prefix", str(tmp_path))
    assert done.returncode == 0, done.stderr
    spec = spec_json(tmp_path, "sized-later")
    assert "nproc" not in spec["metadata"]["kernel_provisioner"]["config"]
    assert "2 ranks" not in spec["display_name"] and "4 ranks" not in spec["display_name"]


@pytest.mark.parametrize("value, says", [
    ("0", "between 1 and 1024, got 0"),
    ("-1", "between 1 and 1024, got -1"),
    ("abc", "expected a whole number of ranks, got 'abc'"),
])
def test_install_refuses_bad_nproc(tmp_path, value, says):
    done = nbdist("install", f"--nproc={value}", "--prefix", str(tmp_path))
    assert done.returncode == 2
    assert "--nproc" in done.stderr and says in done.stderr, done.stderr
    assert not (tmp_path / "share").exists()


def test_install_refuses_two_destinations(tmp_path):
    done = nbdist("install", "--nproc", "2", "--user", "--prefix", str(tmp_path))
    assert done.returncode == 2 and "not allowed with" in done.stderr


def test_jupyter_nbdist_subcommand(tmp_path):
    done = nbdist("nbdist", "install", "--help", script="jupyter")
    assert done.returncode == 0, done.stderr
    assert "--nproc" in done.stdout and "--prefix" in done.stdout
    done = nbdist("nbdist", "install", "--nproc", "2", "--prefix", str(tmp_path),
                  script="jupyter")
    assert done.returncode == 0, done.stderr
    assert spec_json(tmp_path, "multi-rank")["metadata"]["kernel_provisioner"]["config"] == {
        "nproc": 2}


# --- KernelSettings ---------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, names", [
    ({"nproc": 0}, "nproc must be between 1 and 1024, got 0"),
    ({"nproc": 1025}, "nproc must be between 1 and 1024"),
    ({"nproc": True}, "nproc must be an integer"),
    ({"nproc": "4"}, "nproc must be an integer"),
    ({"backend": "mpi"}, "backend must be one of auto, gloo, nccl, got 'mpi'"),
    ({"launcher": ""}, "launcher must be"),
    ({"env": {"A": 1}}, "env must map names to string values"),
    ({"nproc": 4, "primary_rank": 4}, "primary_rank must be a rank of this kernel (0-3)"),
    ({"primary_rank": -1}, "primary_rank"),
    ({"stream_prefix": "{rnak} "}, "stream_prefix '{rnak} ' is not a valid template"),
    ({"nproc": 2, "output_ranks": "1-3"}, "output_ranks: rank '1-3' is outside"),
    ({"output_ranks": "x"}, "output_ranks: bad rank 'x'"),
    ({"collective_timeout": 0}, "collective_timeout must be a positive number"),
    ({"start_timeout": -5.0}, "start_timeout must be a positive number"),
])
def test_settings_validation_names_the_setting(kwargs, names):
    with pytest.raises(SettingsError) as info:
        KernelSettings(**kwargs)
    assert names in str(info.value)


def test_settings_json_round_trip_and_unknown_keys():
    settings = KernelSettings(nproc=3, backend="gloo", env={"A": "1"}, output_ranks="0,2")
    assert KernelSettings.from_json(settings.to_json()) == settings
    assert KernelSettings.from_environ({SETTINGS_ENV: settings.to_json()}) == settings
    assert KernelSettings.from_environ({}) == KernelSettings()
    with pytest.raises(SettingsError, match=r"unknown settings \['nprocs'\]"):
        KernelSettings.from_json('{"nprocs": 4}')
    with pytest.raises(SettingsError, match="not valid JSON"):
        KernelSettings.from_json("{nproc: 4")
    with pytest.raises(SettingsError, match="JSON object"):
        KernelSettings.from_json("[4]")
    with pytest.raises(SettingsError, match="nproc must be between"):
        KernelSettings.from_json('{"nproc": 0}')


def test_parse_env_value():
    for raw, value in [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
                       ("0", False), ("false", False), ("No", False), ("off", False)]:
        assert parse_env_value("NBDIST_X", raw, bool) is value
    assert parse_env_value("NBDIST_ENV", '{"A": 1}', dict) == {"A": "1"}
    assert parse_env_value("NBDIST_NPROC", " 8 ", int) == 8
    for raw, kind in [("maybe", bool), ("[1]", dict), ("{", dict), ("4.5", int)]:
        with pytest.raises(SettingsError, match=r"environment variable NBDIST_X="):
            parse_env_value("NBDIST_X", raw, kind)


# --- MultiRankProvisioner precedence -----------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    import os
    for var in [v for v in os.environ if v.startswith("NBDIST_")]:
        monkeypatch.delenv(var)
    return monkeypatch


def test_defaults_without_env(clean_env):
    assert MultiRankProvisioner(kernel_id="k").resolved_settings() == KernelSettings()


def test_env_gives_the_defaults(clean_env):
    clean_env.setenv("NBDIST_NPROC", "6")
    clean_env.setenv("NBDIST_BACKEND", "GLOO")
    clean_env.setenv("NBDIST_INIT_PROCESS_GROUP", "false")
    clean_env.setenv("NBDIST_ENV", '{"A": "1"}')
    clean_env.setenv("NBDIST_PRIMARY_RANK", "2")
    clean_env.setenv("NBDIST_STREAM_PREFIX", "<{rank}> ")
    clean_env.setenv("NBDIST_OUTPUT_RANKS", "0,5")
    clean_env.setenv("NBDIST_COLLECTIVE_TIMEOUT", "30")
    clean_env.setenv("NBDIST_START_TIMEOUT", "45.5")
    s = MultiRankProvisioner(kernel_id="k").resolved_settings()
    assert (s.nproc, s.backend, s.init_process_group, s.env, s.primary_rank) == (
        6, "gloo", False, {"A": "1"}, 2)
    assert (s.stream_prefix, s.output_ranks, s.collective_timeout, s.start_timeout) == (
        "<{rank}> ", "0,5", 30.0, 45.5)  # text is kept as written, trailing space too
    clean_env.setenv("NBDIST_STREAM_PREFIX", "")  # empty turns the prefix off
    assert MultiRankProvisioner(kernel_id="k").resolved_settings().stream_prefix == ""


def test_config_beats_env_and_kernel_json_beats_config(clean_env):
    clean_env.setenv("NBDIST_NPROC", "6")
    clean_env.setenv("NBDIST_BACKEND", "gloo")
    clean_env.setenv("NBDIST_COLLECTIVE_TIMEOUT", "30")
    cfg = Config({"MultiRankProvisioner": {"nproc": 8, "backend": "nccl"}})
    s = MultiRankProvisioner(kernel_id="k", config=cfg).resolved_settings()
    assert (s.nproc, s.backend, s.collective_timeout) == (8, "nccl", 30.0)
    s = MultiRankProvisioner(kernel_id="k", config=cfg, nproc=3).resolved_settings()
    assert (s.nproc, s.backend, s.collective_timeout) == (3, "nccl", 30.0)
    # the path jupyter_client takes: the factory reads kernel.json and the parent's config
    spec = KernelSpec(argv=["x"], display_name="t", language="python", metadata={
        "kernel_provisioner": {"provisioner_name": "nbdist-provisioner",
                               "config": {"nproc": 5}}})
    parent = LoggingConfigurable(config=cfg)
    prov = KernelProvisionerFactory.instance().create_provisioner_instance("k", spec, parent)
    assert isinstance(prov, MultiRankProvisioner)
    s = prov.resolved_settings()
    assert (s.nproc, s.backend, s.collective_timeout) == (5, "nccl", 30.0)


@pytest.mark.parametrize("var, raw, says", [
    ("NBDIST_NPROC", "abc", "environment variable NBDIST_NPROC='abc' is invalid"),
    ("NBDIST_NPROC", "0", "nproc must be between 1 and 1024, got 0"),
    ("NBDIST_INIT_PROCESS_GROUP", "maybe", "NBDIST_INIT_PROCESS_GROUP='maybe'"),
    ("NBDIST_ENV", "[1]", "NBDIST_ENV='[1]'"),
    ("NBDIST_COLLECTIVE_TIMEOUT", "soon", "NBDIST_COLLECTIVE_TIMEOUT='soon'"),
    ("NBDIST_LAUNCHER", "nosuch", "nosuch"),
])
def test_bad_env_value_fails_naming_it(clean_env, var, raw, says):
    clean_env.setenv(var, raw)
    with pytest.raises(ValueError) as info:
        MultiRankProvisioner(kernel_id="k").resolved_settings()
    assert isinstance(info.value, ProvisionerConfigError)
    assert says in str(info.value) and str(info.value).startswith("nbdist-provisioner:")


def test_bad_env_value_is_moot_when_overridden(clean_env):
    clean_env.setenv("NBDIST_NPROC", "abc")
    assert MultiRankProvisioner(kernel_id="k", nproc=2).resolved_settings().nproc == 2


@pytest.mark.parametrize("kwargs, says", [
    ({"nproc": "four"}, "'nproc' trait"),
    ({"backend": "mpi"}, "'backend' trait"),
    ({"nprocs": 4}, "unknown setting(s) ['nprocs']"),
])
def test_bad_kernel_json_config_is_refused_naming_it(clean_env, kwargs, says):
    with pytest.raises(ProvisionerConfigError) as info:
        MultiRankProvisioner(kernel_id="k", **kwargs)
    assert says in str(info.value)


# --- rank specs -------------------------------------------------------------------------


@pytest.mark.parametrize("spec, ranks", [
    ("all", (0, 1, 2, 3)), ("*", (0, 1, 2, 3)), ("0", (0,)), ("0,2", (0, 2)),
    ("1-3", (1, 2, 3)), (" 3, 0-1 ", (0, 1, 3)), ("2,2,1-2", (1, 2)),
])
def test_parse_rank_set(spec, ranks):
    assert parse_rank_set(spec, 4) == ranks


@pytest.mark.parametrize("spec, says", [
    ("", "empty rank list"), ("x", "bad rank 'x'"), ("-1", "bad rank '-1'"),
    ("3-1", "start is after end"), ("4", "outside this kernel's ranks 0-3"),
    ("0,,1", "bad rank ''"),
])
def test_parse_rank_set_errors(spec, says):
    with pytest.raises(RankSetError) as info:
        parse_rank_set(spec, 4)
    assert says in str(info.value)


def test_format_ranks_examples():
    assert format_ranks([0, 1, 2, 5]) == "0-2,5"
    assert format_ranks((3,)) == "3"
    assert format_ranks([4, 0, 2, 1]) == "0-2,4"


@given(st.sets(st.integers(min_value=0, max_value=63), min_size=1))
def test_format_then_parse_round_trips(ranks):
    text = format_ranks(sorted(ranks))
    assert parse_rank_set(text, 64) == tuple(sorted(ranks))


# --- one declaration per setting ----------------------------------------------------------


def test_readme_settings_table_is_made_from_the_declarations():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert settings_table() in readme, "README's settings table is stale:\n" + settings_table()


def test_every_declared_setting_is_a_configurable_trait_with_its_help_and_env():
    traits = MultiRankProvisioner.class_traits(config=True)
    for f in declared():
        assert f.name in traits, f.name
        assert f.metadata["help"] in traits[f.name].help
        assert env_var(f.name) in traits[f.name].help


def test_the_kernels_folder_holds_the_packaged_kernelspec_template():
    repo = Path(__file__).resolve().parent.parent
    packaged = json.loads((repo / "nbdist_provisioner" / "kernelspec" / "kernel.json").read_text())
    assert json.loads((repo / "kernels" / "multi-rank" / "kernel.json").read_text()) == packaged
