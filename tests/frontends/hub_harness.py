"""A real JupyterHub for the hub test: the admin's own config (what README "JupyterHub"
tells an admin to write), configurable-http-proxy from dev.py's set-up, and a kernel
websocket through the hub's proxy."""

from __future__ import annotations

import http.cookiejar
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import websocket

from kernel_harness import process_tree
from servers import POLL, free_port, http_json, tail

REPO = Path(__file__).resolve().parents[2]
HUB_CONFIG = REPO / "config" / "jupyterhub_config.py"
CHP = REPO / ".node" / "node_modules" / ".bin" / "configurable-http-proxy"


def admin_config(base: Path, ports: dict[str, int], site_env: dict[str, str]) -> str:
    """The admin's jupyterhub_config.py, as README "JupyterHub" describes it: what any hub
    needs (addresses, proxy, authenticator, spawner), the site's own spawner environment,
    then the repo's file with load_subconfig."""
    return f"""\
c = get_config()  # noqa: F821
# -- what every hub needs; the nbdist file sets none of it
c.JupyterHub.bind_url = "http://127.0.0.1:{ports['public']}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{ports['hub']}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports['proxy_api']}"
c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
c.ConfigurableHTTPProxy.pid_file = {str(base / 'proxy.pid')!r}
c.JupyterHub.db_url = "sqlite:///{base / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = {str(base / 'jupyterhub_cookie_secret')!r}
c.JupyterHub.authenticator_class = "dummy"  # any password: for trying, never production
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(base / 'home' / '{username}')!r}
c.Spawner.ip = "127.0.0.1"
c.Spawner.args = ["--allow-root"]  # this test runs as root
c.Spawner.start_timeout = 300  # a 2-core machine shared with other tests
c.Spawner.http_timeout = 300
# -- the site's own spawner environment, which the nbdist file must not replace
c.Spawner.environment = {site_env!r}
# -- nbdist-provisioner
load_subconfig({str(HUB_CONFIG)!r})  # noqa: F821
"""


@dataclass
class Hub:
    """A running JupyterHub and the one user the test logs in."""

    proc: Any
    url: str
    log: Path
    user: str = "alice"
    token: str = ""

    def api(self, method: str, path: str, body: Any = None,
            token: str | None = None, timeout: float = 120) -> tuple[int, Any]:
        headers = {"Authorization": f"token {token or self.token}"} if (token or self.token) \
            else {}
        return http_json(method, f"{self.url}{path}", body, headers, timeout)

    def log_tail(self) -> str:
        return tail(self.log, 8000)

    def form_login(self, password: str) -> None:
        """Log in on the hub's login form as a browser does (this creates the user), without
        following the redirect that would spawn the server."""
        jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar),
                                             NoRedirect)
        opener.open(f"{self.url}/hub/login", timeout=60).read()
        xsrf = next(c.value for c in jar if c.name == "_xsrf")
        form = urllib.parse.urlencode({"username": self.user, "password": password,
                                       "_xsrf": xsrf}).encode()
        try:
            opener.open(f"{self.url}/hub/login?next=", data=form, timeout=60)
            raise AssertionError(f"login did not redirect:\n{self.log_tail()}")
        except urllib.error.HTTPError as err:
            assert err.code == 302, (err.code, self.log_tail())
        assert any(c.name.startswith("jupyterhub-session") for c in jar), list(jar)

    def singleuser_pid(self) -> int | None:
        """The user's server: the hub's child running jupyterhub-singleuser."""
        for child in psutil.Process(self.proc.pid).children():
            try:
                if "jupyterhub-singleuser" in " ".join(child.cmdline()):
                    return int(child.pid)
            except psutil.NoSuchProcess:
                continue
        return None

    def server_tree(self) -> list[int]:
        pid = self.singleuser_pid()
        return process_tree(pid) if pid else []


def hub_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "jupyterhub", "-f", str(config)]


def hub_ports() -> dict[str, int]:
    return {name: free_port() for name in ("public", "hub", "proxy_api")}


@dataclass
class KernelSocket:
    """The kernel websocket of a user's server, reached through the hub's proxy."""

    url: str
    token: str
    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    ws: Any = None

    def __post_init__(self) -> None:
        self.ws = websocket.create_connection(
            f"{self.url}?session_id={self.session}".replace("http://", "ws://"),
            header=[f"Authorization: token {self.token}"], timeout=60)

    def send_execute(self, code: str) -> str:
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": self.session, "version": "5.3",
                       "date": datetime.now(timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False,
                        "stop_on_error": True}}))
        return msg_id

    def messages_of(self, msg_id: str, until: str, timeout: float = 180,
                    context: Any = None) -> list[dict[str, Any]]:
        """Messages parented to ``msg_id`` until ``until`` ("idle", "busy") is seen on iopub
        (and, for idle, the execute_reply too). ``context()`` (the hub's log, say) goes
        into the failure when it does not come (within the test's own timeout)."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        replied = until != "idle"
        while True:
            left = deadline - time.monotonic()
            try:
                assert left > 0, f"no {until} for {msg_id} within {timeout}s: {got}"
                self.ws.settimeout(max(POLL, left))
                msg = json.loads(self.ws.recv())
            except (AssertionError, websocket.WebSocketTimeoutException) as err:
                raise AssertionError(f"{err or 'timed out'}; got {got}\n"
                                     f"{context() if context else ''}") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            got.append(msg)
            replied = replied or msg["msg_type"] == "execute_reply"
            if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == until
                    and replied):
                return got

    def close(self) -> None:
        self.ws.close()


def stream_text(messages: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in messages
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
