"""The debugger protocol on a 2-rank kernel through jupyter_client, as ipykernel's own
tests/test_debugger.py drives a plain kernel: initialize, attach, dumpCell, setBreakpoints,
configurationDone, a breakpoint that stops the debugged rank (and only it), stackTrace,
scopes, variables, richInspectVariables, copyToGlobals, continue, disconnect; the debugged
rank chosen by ``%debug_rank`` (issue 9 point 8)."""

from __future__ import annotations

import itertools
import queue
import time
from typing import Any

import pytest

from kernel_harness import collect_until_idle, reply_to, run_cell

TIMEOUT = 60
_seq = itertools.count(1)

CODE = """def f(a, b):
    c = a + b * (rank + 1)
    return c

result = f(2, 3)
print('result', result)"""


def debug_request(kc: Any, command: str, **arguments: Any) -> dict[str, Any]:
    msg = kc.session.msg("debug_request", {"type": "request", "seq": next(_seq),
                                           "command": command, "arguments": arguments})
    kc.control_channel.send(msg)
    deadline = time.monotonic() + TIMEOUT
    while True:
        reply = kc.control_channel.get_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return dict(reply["content"])


def wait_stopped(kc: Any, skipped: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The debug_event of the debugged rank stopping; the other iopub messages meanwhile go
    to ``skipped`` (the other ranks' output of the cell arrives while it waits)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["msg_type"] == "debug_event" and msg["content"].get("event") == "stopped":
            return dict(msg["content"])
        if skipped is not None:
            skipped.append(msg)
    raise AssertionError("the debugged rank did not stop")


@pytest.fixture(scope="module")
def k2(start_module_kernel):
    return start_module_kernel("nbdist-test-2")


@pytest.fixture
def session(k2):
    kc = k2.kc
    reply = debug_request(kc, "initialize", clientID="test-client", clientName="testClient",
                          adapterID="", pathFormat="path", linesStartAt1=True,
                          columnsStartAt1=True, supportsVariableType=True,
                          supportsVariablePaging=True, supportsRunInTerminalRequest=True,
                          locale="en")
    assert reply.get("success"), reply
    assert debug_request(kc, "attach")["success"]
    try:
        yield kc
    finally:
        # (terminateDebuggee=True asks debugpy to end the debugged rank: the kernel would
        # heal with new ranks, which is not what this module tests)
        debug_request(kc, "disconnect", restart=False, terminateDebuggee=False)


def test_kernel_info_advertises_the_debugger(k2):
    # (once the ranks are up: their kernels say whether they can debug)
    assert run_cell(k2.kc, "pass").status == "ok"
    msg_id = k2.kc.kernel_info()
    content = reply_to(k2.kc, msg_id)["content"]
    assert content["debugger"] is True and "debugger" in content["supported_features"]


def test_breakpoint_stops_the_debugged_rank_and_its_frames_and_variables_show(session):
    kc = session
    source = debug_request(kc, "dumpCell", code=CODE)["body"]["sourcePath"]
    info = debug_request(kc, "debugInfo")["body"]
    assert info["isStarted"] is True
    bps = debug_request(kc, "setBreakpoints", breakpoints=[{"line": 2}],
                        source={"path": source}, sourceModified=False)
    assert bps["success"] and bps["body"]["breakpoints"][0]["verified"], bps
    assert source in [b["source"] for b in debug_request(kc, "debugInfo")["body"]["breakpoints"]]
    assert debug_request(kc, "configurationDone")["success"]

    msg_id = kc.execute(CODE)
    before: list[dict[str, Any]] = []
    stopped = wait_stopped(kc, before)
    assert stopped["body"]["reason"] == "breakpoint"
    frames = debug_request(kc, "stackTrace", threadId=stopped["body"]["threadId"])[
        "body"]["stackFrames"]
    assert frames[0]["name"] == "f" and frames[0]["line"] == 2
    scopes = debug_request(kc, "scopes", frameId=frames[0]["id"])["body"]["scopes"]
    local_ref = next(s for s in scopes if s["name"] == "Locals")["variablesReference"]
    local_vars = {v["name"]: v["value"] for v in debug_request(
        kc, "variables", variablesReference=local_ref)["body"]["variables"]}
    assert local_vars["a"] == "2" and local_vars["b"] == "3"
    rich = debug_request(kc, "richInspectVariables", variableName="a", frameId=frames[0]["id"])
    assert rich["body"]["data"] == {"text/plain": "2"}
    copied = debug_request(kc, "copyToGlobals", srcVariableName="b", dstVariableName="b_copy",
                           srcFrameId=frames[0]["id"])
    assert copied["success"], copied

    # rank 1 ran the cell to its end meanwhile; rank 0, debugged, waits at the breakpoint
    assert debug_request(kc, "continue", threadId=stopped["body"]["threadId"])["success"]
    iopub = before + collect_until_idle(kc, msg_id, TIMEOUT)
    text = "".join(m["content"]["text"] for m in iopub if m["msg_type"] == "stream"
                   and m["content"]["name"] == "stdout"
                   and m["parent_header"].get("msg_id") == msg_id)
    assert "[rank 0] result 5" in text and "[rank 1] result 8" in text
    notice = "".join(m["content"]["text"] for m in iopub if m["msg_type"] == "stream"
                     and m["content"]["name"] == "stderr")
    assert "[nbdist] debugger: rank 0 stopped (breakpoint)" in notice
    assert reply_to(kc, msg_id)["content"]["status"] == "ok"
    debug_request(kc, "setBreakpoints", breakpoints=[], source={"path": source},
                  sourceModified=False)
    run = run_cell(kc, "b_copy")
    assert "3" in run.of_type("execute_result")[0]["content"]["data"]["text/plain"]


def test_inspect_variables_not_at_a_breakpoint(session):
    run = run_cell(session, "text = 'Hello the world'")
    assert run.status == "ok"
    names = [v["name"] for v in debug_request(session, "inspectVariables")["body"]["variables"]]
    assert "text" in names
    rich = debug_request(session, "richInspectVariables", variableName="text")
    assert rich["body"]["data"] == {"text/plain": "'Hello the world'"}


def test_debug_rank_magic_debugs_another_rank(k2):
    kc = k2.kc
    run = run_cell(kc, "%debug_rank 1")
    assert run.stream_text() == "[nbdist] the debugger debugs rank 1\n"
    try:
        assert debug_request(kc, "initialize", clientID="t", adapterID="",
                             pathFormat="path", linesStartAt1=True,
                             columnsStartAt1=True)["success"]
        assert debug_request(kc, "attach")["success"]
        source = debug_request(kc, "dumpCell", code=CODE)["body"]["sourcePath"]
        debug_request(kc, "setBreakpoints", breakpoints=[{"line": 2}], source={"path": source},
                      sourceModified=False)
        debug_request(kc, "configurationDone")
        msg_id = kc.execute(CODE)
        stopped = wait_stopped(kc)
        frames = debug_request(kc, "stackTrace", threadId=stopped["body"]["threadId"])[
            "body"]["stackFrames"]
        scopes = debug_request(kc, "scopes", frameId=frames[0]["id"])["body"]["scopes"]
        globals_ref = next(s for s in scopes if s["name"] == "Globals")["variablesReference"]
        rank = {v["name"]: v["value"] for v in debug_request(
            kc, "variables", variablesReference=globals_ref)["body"]["variables"]}["rank"]
        assert rank == "1"  # the breakpoint stopped rank 1
        debug_request(kc, "setBreakpoints", breakpoints=[], source={"path": source},
                      sourceModified=False)
        debug_request(kc, "continue", threadId=stopped["body"]["threadId"])
        collect_until_idle(kc, msg_id, TIMEOUT)
        reply_to(kc, msg_id)
    finally:
        # (terminateDebuggee=True asks debugpy to end the debugged rank: the kernel would
        # heal with new ranks, which is not what this module tests)
        debug_request(kc, "disconnect", restart=False, terminateDebuggee=False)
        run_cell(kc, "%debug_rank 0")
