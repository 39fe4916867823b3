"""JupyterHub for real (issue 9 point 9, issue 14): the README's admin steps, a user who
logs in through the REST API, the multi-rank kernel through the hub's proxy, and a server
stop with a busy 4-rank kernel that leaves no process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub_harness import (
    CHP,
    Hub,
    KernelSocket,
    admin_config,
    hub_argv,
    hub_ports,
    stream_text,
)
from kernel_harness import kill_pids, wait_gone
from notebook_ui import ARTIFACTS, SCREENSHOTS, UI_TIMEOUT
from servers import (
    clean_env,
    keep_log,
    require,
    start_process,
    stop_process_group,
    wait_for,
)

pytestmark = pytest.mark.slow

#: the site's own spawner environment, which nbdist's hub config must keep
SITE_ENV = {"SITE_DATASETS": "/srv/datasets"}
#: what config/jupyterhub_config.py gives the spawner
HUB_NPROC = 4
HUB_COLLECTIVE_TIMEOUT = "600"
#: issue 14 point 4: after the hub stops the server, nothing of it is left within this
STOP_DEADLINE = 10.0


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    require(CHP, "configurable-http-proxy")
    base = tmp_path_factory.mktemp("hub")
    # README, JupyterHub step 1: the kernelspec without --nproc, where the users' servers
    # find it (here --prefix plus JUPYTER_PATH in the spawner environment, README's variant)
    specs = base / "singleuser-prefix"
    done = subprocess.run([sys.executable, "-m", "nbdist_provisioner.cli", "install",
                           "--prefix", str(specs)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    site_env = {**SITE_ENV, "JUPYTER_PATH": str(specs / "share" / "jupyter")}
    config = base / "jupyterhub_config.py"
    ports = hub_ports()
    config.write_text(admin_config(base, ports, site_env))
    log = base / "hub.log"
    # the hub runs in the environment it is installed in (its bin/ on PATH, as when
    # activated), where the spawner finds jupyterhub-singleuser
    env = clean_env(PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                          os.environ.get("PATH", "")]))
    proc = start_process(hub_argv(config), env, base, log)
    hub = Hub(proc, f"http://127.0.0.1:{ports['public']}", log)
    try:
        wait_for("the hub API through the proxy",
                 lambda: hub.api("GET", "/hub/api/", timeout=5)[0] == 200, 180, proc, log)
        yield hub
    finally:
        if hub.token and hub.singleuser_pid():
            hub.api("DELETE", f"/hub/api/users/{hub.user}/server")
        left = stop_process_group(proc)
        keep_log(log, "hub.log")  # the users' servers log there too
        assert not left, f"left running after the hub stopped: {left}\n{hub.log_tail()}"


def login_and_spawn(hub: Hub) -> None:
    """Log in with a password (the login form, then a token through the REST API), then
    start the server through the REST API."""
    hub.form_login("any")
    status, body = hub.api("POST", f"/hub/api/users/{hub.user}/tokens",
                           {"auth": {"username": hub.user, "password": "any"},
                            "note": "nbdist hub test"})
    assert status in (200, 201), (status, body, hub.log_tail())
    hub.token = body["token"]
    status, body = hub.api("POST", f"/hub/api/users/{hub.user}/server")
    assert status in (201, 202), (status, body, hub.log_tail())

    def ready() -> bool:
        status, model = hub.api("GET", f"/hub/api/users/{hub.user}")
        assert status == 200, (status, model)
        server = (model.get("servers") or {}).get("")
        # the entry exists from the POST on (pending "spawn"); the hub drops it if the
        # spawn fails: say so now, with the hub's log, instead of waiting out the deadline
        assert server is not None, f"the spawn failed:\n{hub.log_tail()}"
        return bool(server.get("ready"))
    wait_for("the user's server", ready, 300, hub.proc, hub.log)


def launcher_shows(hub: Hub, context: Any, display_name: str) -> None:
    """Log in on the hub's page in Chromium and find the kernel's card in JupyterLab's
    launcher, as a user would."""
    page = context.new_page()
    try:
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", hub.user)
        page.fill("#password_input", "any")
        page.click("#login_submit")
        card = page.locator(".jp-LauncherCard", has_text=display_name)
        card.first.wait_for(timeout=UI_TIMEOUT * 1000)
        assert f"/user/{hub.user}/" in page.url, page.url
        # with the Python logo that nbdist install puts beside kernel.json
        card.first.locator("img").wait_for(timeout=UI_TIMEOUT * 1000)
        page.screenshot(path=str(SCREENSHOTS / "hub-launcher.png"))
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "failed-hub-launcher.png"))
        raise
    finally:
        page.close()
        context.clear_cookies()  # the Lab tests' server is on the same host


def test_multi_rank_kernel_through_the_hub_then_server_stop_leaves_nothing(
        hub: Hub, browser_context: Any):
    login_and_spawn(hub)
    user_api = f"/user/{hub.user}/api"
    # the kernel picker shows the rank count the spawner set, not a literal "N"
    status, specs = hub.api("GET", f"{user_api}/kernelspecs")
    assert status == 200, (status, specs, hub.log_tail())
    spec = specs["kernelspecs"]["multi-rank"]["spec"]
    display_name = f"Python 3 (multi-rank, {HUB_NPROC} ranks)"
    assert spec["display_name"] == display_name, spec
    assert "nproc" not in spec["metadata"]["kernel_provisioner"]["config"]
    launcher_shows(hub, browser_context, display_name)

    status, kernel = hub.api("POST", f"{user_api}/kernels", {"name": "multi-rank"})
    assert status == 201, (status, kernel, hub.log_tail())
    ws = KernelSocket(f"{hub.url}{user_api}/kernels/{kernel['id']}/channels", hub.token)
    try:
        msg_id = ws.send_execute(
            "import os\n"
            "print(rank, world_size, os.environ.get('SITE_DATASETS'),"
            " os.environ.get('NBDIST_COLLECTIVE_TIMEOUT'), flush=True)")
        got = ws.messages_of(msg_id, "idle", context=hub.log_tail)
        reply = next(m for m in got if m["msg_type"] == "execute_reply")
        assert reply["content"]["status"] == "ok", reply["content"]
        assert sorted(stream_text(got).splitlines()) == [
            f"[rank {r}] {r} {HUB_NPROC} {SITE_ENV['SITE_DATASETS']} {HUB_COLLECTIVE_TIMEOUT}"
            for r in range(HUB_NPROC)]

        # a busy 4-rank kernel, then the hub stops the server (SIGINT to jupyter_server)
        busy_id = ws.send_execute("import time\nwhile True:\n    time.sleep(0.05)")
        ws.messages_of(busy_id, "busy", context=hub.log_tail)
        pids = hub.server_tree()
        assert len(pids) >= 2 + HUB_NPROC, pids  # server, multiplexer, ranks
    finally:
        ws.close()
    stopped_at = time.monotonic()
    status, body = hub.api("DELETE", f"/hub/api/users/{hub.user}/server")
    assert status in (202, 204), (status, body)
    alive = wait_gone(pids, timeout=max(0.05, STOP_DEADLINE - (time.monotonic() - stopped_at)))
    took = time.monotonic() - stopped_at
    kill_pids(alive)
    print(f"server stop: {len(pids) - len(alive)} of {len(pids)} processes gone "
          f"after {took:.1f}s")
    assert not alive, (f"still running {took:.1f}s after the hub stopped the server: "
                       f"{alive}\n{hub.log_tail()}")


def test_admin_config_keeps_the_sites_spawner_environment(tmp_path: Path):
    """The nbdist file adds to c.Spawner.environment and c.Spawner.args, whichever way the
    admin set them before load_subconfig (issue 14 point 2)."""
    from traitlets.config.loader import PyFileConfigLoader

    ports = {"public": 1, "hub": 2, "proxy_api": 3}
    config_file = tmp_path / "jupyterhub_config.py"
    config_file.write_text(admin_config(tmp_path, ports, SITE_ENV))
    config = PyFileConfigLoader(str(config_file)).load_config()
    env = config.Spawner.environment
    assert env["SITE_DATASETS"] == SITE_ENV["SITE_DATASETS"]
    assert env["NBDIST_NPROC"] == str(HUB_NPROC)
    assert env["NBDIST_COLLECTIVE_TIMEOUT"] == HUB_COLLECTIVE_TIMEOUT
    assert config.Spawner.args[0] == "--allow-root"
    assert any("MultiRankKernelSpecManager" in a for a in config.Spawner.args)
