"""``python -m nbdist_provisioner.agent``: starts and supervises the ranks of one kernel.

The multiplexer starts one agent per kernel (it lives across generations of
ranks). The agent imports what ranks need once, then forks each rank from
itself (see ``preload``), or starts it by exec when forking is off or unsafe.
It is single-threaded: one ``select`` loop over its command pipe, the ranks'
exit pidfds and their stderr pipes. It is a child subreaper, so what ranks
start in sessions of their own comes back to it and is ended with them.

Its stdin is the lifeline: at end-of-file (the multiplexer ended, even by
SIGKILL) it kills every rank and everything they started, then exits.

Arguments (not secret): ``--fork`` / ``--no-fork``, ``--preload-torch``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import sys
from typing import Any

from .. import proctree
from .children import STORE, RankChild, exec_rank, fork_rank, fork_store
from .protocol import MAX_LINE, decode, encode


class Agent:
    def __init__(self, forking: bool, why_not: str) -> None:
        self.forking = forking
        self.why_not = why_not
        self.sel = selectors.DefaultSelector()
        #: the current child of each rank number (a new generation replaces the old)
        self.ranks: dict[int, RankChild] = {}
        #: every child we supervise, by pid, until its end is handled: a replaced rank
        #: still ending is ours to reap (reap_orphans must not take it from _rank_ended)
        self.children: dict[int, RankChild] = {}
        self._commands = b""
        self._stdin = sys.stdin.buffer.fileno()
        self._stdout = sys.stdout.buffer.fileno()
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._stdin, False)

    def send(self, event: dict[str, Any]) -> None:
        data = encode(event)
        os.set_blocking(self._stdout, True)
        try:
            while data:
                data = data[os.write(self._stdout, data):]
        except BrokenPipeError:
            pass  # the multiplexer is gone: its end-of-file ends us next

    def run(self) -> int:
        signal.set_wakeup_fd(self._wakeup_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # (wakes the loop: reap orphans)
        signal.signal(signal.SIGTERM, lambda *_: None)
        self.sel.register(self._stdin, selectors.EVENT_READ, "commands")
        self.sel.register(self._wakeup_r, selectors.EVENT_READ, "wakeup")
        self.send({"event": "ready", "pid": os.getpid(), "forking": self.forking,
                   "why_not": self.why_not})
        while True:
            for key, _ in self.sel.select():
                if self.sel.get_map().get(key.fd) is not key:
                    continue  # unregistered by an earlier event of this batch (a child ended)
                what = key.data
                if what == "commands":
                    if not self._read_commands():
                        self.end_all()
                        return 0
                elif what == "wakeup":
                    with contextlib.suppress(BlockingIOError):
                        signals = os.read(self._wakeup_r, 512)
                        if signal.SIGTERM.to_bytes(1, "little") in signals:
                            self.end_all()
                            return 0
                    self.reap_orphans()
                elif isinstance(what, tuple) and what[0] == "exit":
                    self._rank_ended(what[1])
                elif isinstance(what, tuple) and what[0] == "stderr":
                    child = what[1]
                    if not child.read_stderr():
                        self.sel.unregister(key.fd)

    # -- commands ----------------------------------------------------------------------
    def _read_commands(self) -> bool:
        try:
            data = os.read(self._stdin, 1 << 16)
        except BlockingIOError:
            return True
        if not data:
            return False
        self._commands += data
        if len(self._commands) > MAX_LINE:
            self._commands = b""
            self.send({"event": "error", "error": "a command line was too long; dropped"})
        while b"\n" in self._commands:
            line, self._commands = self._commands.split(b"\n", 1)
            try:
                self.command(decode(line))
            except Exception as err:  # a bad command: say so, keep serving
                self.send({"event": "error", "error": f"{type(err).__name__}: {err}"})
        return True

    def command(self, cmd: dict[str, Any]) -> None:
        op = cmd.get("op")
        if op == "start":
            for spec in cmd["ranks"]:
                self.start_rank(int(spec["rank"]), dict(spec["env"]), str(spec["config"]))
        elif op == "signal":
            child = self.ranks.get(int(cmd["rank"]))
            if child is not None:
                child.signal(int(cmd["signum"]))
        elif op == "tail":
            child = self.ranks.get(int(cmd["rank"]))
            if child is not None:
                child.read_stderr()
            self.send({"event": "tail", "rank": cmd["rank"],
                       "tail": child.tail_text() if child else ""})
        elif op == "store":
            self.start_store(str(cmd["host"]), int(cmd["world_size"]), float(cmd["timeout"]))
        elif op == "end_all":
            self.end_all()
            self.send({"event": "ended"})
        else:
            raise ValueError(f"unknown op {op!r}")

    def start_rank(self, rank: int, env: dict[str, str], config: str) -> None:
        try:
            child = (fork_rank if self.forking else exec_rank)(rank, env, config)
        except OSError as err:
            self.send({"event": "failed", "rank": rank, "error": str(err)})
            return
        self._supervise(child)
        self.send({"event": "started", "rank": rank, "pid": child.pid})

    def start_store(self, host: str, world_size: int, timeout_s: float) -> None:
        """Bind the rendezvous store's port on ``host`` and fork its server (see ``store``);
        the port is known (and reported) before the server runs: clients wait in the
        backlog, so nobody can take the port in between."""
        from .store import bind_listener

        old = self.ranks.get(STORE)
        if old is not None:
            old.signal(signal.SIGKILL)
        try:
            listener = bind_listener(host)
            port = int(listener.getsockname()[1])
            try:
                child = fork_store(listener.fileno(), host, port, world_size, timeout_s)
            finally:
                listener.close()
        except OSError as err:
            self.send({"event": "failed", "rank": STORE, "error": f"store on {host}: {err}"})
            return
        self._supervise(child)
        self.send({"event": "store", "rank": STORE, "pid": child.pid, "host": host,
                   "port": port})

    def _supervise(self, child: RankChild) -> None:
        self.ranks[child.rank] = child
        self.children[child.pid] = child
        self.sel.register(child.stderr, selectors.EVENT_READ, ("stderr", child))
        if child.pidfd >= 0:
            self.sel.register(child.pidfd, selectors.EVENT_READ, ("exit", child))

    # -- ends ---------------------------------------------------------------------------
    def _rank_ended(self, child: RankChild) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(child.pidfd)
        if child.stderr >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(child.stderr)
        code = child.ended()
        self.children.pop(child.pid, None)
        if self.ranks.get(child.rank) is child:
            del self.ranks[child.rank]
        self.send({"event": "exited", "rank": child.rank, "pid": child.pid,
                   "returncode": code, "tail": child.tail_text()})
        if not self.ranks:
            self.sweep()  # what the ranks started and left behind ends with them

    def reap_orphans(self) -> None:
        """Reap ended children that are not ranks (adopted orphans); ranks with no pidfd
        are noticed here too."""
        for pid in proctree.children_of(os.getpid()):
            child = self.children.get(pid)
            if child is not None:
                if child.pidfd < 0 and _ended(pid):
                    self._rank_ended(child)
                continue
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def sweep(self) -> None:
        """End every process left from ranks that are gone (orphans adopted by us)."""
        for pid in proctree.children_of(os.getpid()):
            if pid not in self.children:
                proctree.kill_descendants(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.reap_orphans()

    def end_all(self) -> None:
        """End every rank and every process they started (all our descendants)."""
        for child in list(self.children.values()):
            child.signal(signal.SIGKILL)
        proctree.kill_descendants(os.getpid())
        for child in list(self.children.values()):
            with contextlib.suppress(ChildProcessError):
                self._rank_ended(child)
        proctree.reap_children()


def _ended(pid: int) -> bool:
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbdist_provisioner.agent")
    parser.add_argument("--no-fork", action="store_true", help="start ranks by exec")
    parser.add_argument("--preload-torch", action="store_true")
    args = parser.parse_args(argv)
    # first: nothing we start may outlive us, and we end with our parent
    proctree.become_subreaper()
    proctree.set_parent_death_signal(signal.SIGTERM)
    forking, why_not = False, "the fork server is turned off (fork_server=False)"
    if not args.no_fork:
        from .preload import preload

        forking, why_not = preload(torch=args.preload_torch)
    return Agent(forking, why_not).run()


if __name__ == "__main__":
    sys.exit(main())
