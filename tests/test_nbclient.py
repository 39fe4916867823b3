"""Notebooks on the multi-rank kernel: through nbclient, and through the `nbdist run` CLI."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

NBDIST = Path(sys.executable).with_name("nbdist")


def notebook(*sources: str) -> nbformat.NotebookNode:
    return new_notebook(cells=[new_code_cell(s) for s in sources])


def stdout_text(cell: Any) -> str:
    return "".join(o["text"] for o in cell.outputs
                   if o["output_type"] == "stream" and o["name"] == "stdout")


def run(nb: nbformat.NotebookNode, tmp_path: Path, **kw: Any) -> NotebookClient:
    client = NotebookClient(nb, kernel_name="nbdist-test-4", timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}}, **kw)
    client.execute()
    return client


def test_state_persists_and_results_are_kept(tmp_path):
    nb = notebook("x = 20 + rank", "print('x is', x)", "x - rank", "rank")
    run(nb, tmp_path)
    nbformat.validate(nb)
    lines = sorted(stdout_text(nb.cells[1]).splitlines())
    assert lines == [f"[rank {r}] x is {20 + r}" for r in range(4)]
    # identical results from every rank: kept once, with the ranks in the metadata
    [same] = nb.cells[2].outputs
    assert same["output_type"] == "execute_result"
    assert same["data"]["text/plain"] == "20"
    assert same["metadata"]["nbdist"]["ranks"] == [0, 1, 2, 3]
    assert same["execution_count"] == nb.cells[2].execution_count == 3
    # differing results: one Out[n], each rank's value labelled and kept
    [differing] = nb.cells[3].outputs
    assert differing["output_type"] == "execute_result"
    assert differing["execution_count"] == nb.cells[3].execution_count == 4
    assert differing["data"]["text/plain"].splitlines() == [f"[rank {r}] {r}"
                                                            for r in range(4)]
    assert [(k["ranks"], k["data"]["text/plain"]) for k in
            differing["metadata"]["nbdist"]["outputs"]] == [([r], str(r)) for r in range(4)]
    # the notebook round-trips through the file format
    path = tmp_path / "out.ipynb"
    nbformat.write(nb, path)
    assert nbformat.read(path, as_version=4).cells[2].outputs[0]["data"]["text/plain"] == "20"


FAILING = ("y = 1", "if rank in (1, 3):\n    raise ValueError(f'bad rank {rank}')",
           "print('after', y)")


def test_failing_cell_raises_naming_the_ranks(tmp_path):
    nb = notebook(*FAILING)
    with pytest.raises(CellExecutionError) as info:
        run(nb, tmp_path)
    err = info.value
    assert err.ename == "ValueError"
    assert "ranks 1,3 of 4" in err.evalue, err.evalue
    assert "bad rank" in str(err)
    # nbformat error outputs have no metadata: each rank's traceback is labelled instead
    errors = [o for o in nb.cells[1].outputs if o["output_type"] == "error"]
    assert sorted(o["traceback"][0] for o in errors) == ["[rank 1]", "[rank 3]"]
    assert sorted(o["evalue"] for o in errors) == ["bad rank 1", "bad rank 3"]
    assert nb.cells[2].outputs == [] and nb.cells[2].execution_count is None


def test_allow_errors_continues_after_a_failing_cell(tmp_path):
    nb = notebook(*FAILING)
    run(nb, tmp_path, allow_errors=True)
    assert any(o["output_type"] == "error" for o in nb.cells[1].outputs)
    # the same line from every rank: once, labelled with them all
    assert stdout_text(nb.cells[2]).splitlines() == ["[ranks 0-3] after 1"]


class LineReader:
    """Lines of a pipe as they come, with a deadline (a thread feeds a queue)."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, predicate: Any, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.seen):
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out; stdout so far: {self.seen}") from None
            if line is None:
                raise AssertionError(f"stdout closed; got: {self.seen}")
            self.seen.append(line.rstrip("\n"))

    def rest(self) -> list[str]:
        while (line := self.lines.get(timeout=30)) is not None:
            self.seen.append(line.rstrip("\n"))
        return self.seen


def test_cli_run_streams_live_writes_output_and_fails_on_error(tmp_path):
    go = tmp_path / "go"
    src = tmp_path / "live.ipynb"
    nbformat.write(notebook(
        # each rank prints, then waits until the test has seen every rank's line on
        # the CLI's stdout: only live output lets this cell finish
        f"import os, time\nprint('waiting', rank, flush=True)\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.01)\nprint('done', rank)",
        "1 / (rank - 1)"), src)
    out = tmp_path / "executed.ipynb"
    proc = subprocess.Popen([str(NBDIST), "run", str(src), "--kernel", "nbdist-test-2",
                             "--output", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        reader = LineReader(proc.stdout)  # type: ignore[arg-type]
        reader.until(lambda seen: {"[rank 0] waiting 0", "[rank 1] waiting 1"} <= set(seen))
        go.touch()
        lines = reader.rest()
        stderr = proc.stderr.read()  # type: ignore[union-attr]
        assert proc.wait(timeout=60) == 1, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert {"[rank 0] done 0", "[rank 1] done 1"} <= set(lines), lines
    assert "ZeroDivisionError" in stderr and f"wrote {out}" in stderr
    executed = nbformat.read(out, as_version=4)
    assert "[rank 1] done 1" in stdout_text(executed.cells[0])
    errors = [o for o in executed.cells[1].outputs if o["output_type"] == "error"]
    assert [o["traceback"][0] for o in errors] == ["[rank 1]"]
    assert errors[0]["ename"] == "ZeroDivisionError"


def test_cli_run_with_nproc_succeeds(tmp_path):
    src = tmp_path / "ok.ipynb"
    nbformat.write(notebook("import os\nprint(rank, os.environ['WORLD_SIZE'])", "world_size"),
                   src)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBDIST_")}
    done = subprocess.run([str(NBDIST), "run", str(src), "--nproc", "3"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(line for line in done.stdout.splitlines() if line.startswith("[rank")) == [
        f"[rank {r}] {r} 3" for r in range(3)]
    executed = nbformat.read(tmp_path / "ok.out.ipynb", as_version=4)
    [result] = executed.cells[1].outputs
    assert result["data"]["text/plain"] == "3"
    assert result["metadata"]["nbdist"]["ranks"] == [0, 1, 2]


def test_cli_run_missing_notebook_exits_2(tmp_path):
    done = subprocess.run([str(NBDIST), "run", str(tmp_path / "nope.ipynb")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no such notebook" in done.stderr and "nope.ipynb" in done.stderr


def test_cli_run_uses_the_notebooks_kernelspec_and_records_it(tmp_path):
    nb = notebook("print('on', world_size, 'ranks')")
    nb.metadata["kernelspec"] = {"name": "nbdist-test-2", "display_name": "x",
                                 "language": "python"}
    src = tmp_path / "own.ipynb"
    nbformat.write(nb, src)
    done = subprocess.run([str(NBDIST), "run", str(src)], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert "[ranks 0-1] on 2 ranks" in done.stdout
    assert "(kernelspec nbdist-test-2)" in done.stderr
    executed = nbformat.read(tmp_path / "own.out.ipynb", as_version=4)
    assert executed.metadata["kernelspec"]["name"] == "nbdist-test-2"
    assert executed.metadata["kernelspec"]["display_name"] == "Python 3 (multi-rank, 2 ranks)"
    # --nproc wins over the notebook's, and is recorded too
    done = subprocess.run([str(NBDIST), "run", str(src), "--nproc", "3", "-o",
                           str(tmp_path / "three.ipynb")], capture_output=True, text=True,
                          timeout=180)
    assert "[ranks 0-2] on 3 ranks" in done.stdout, done.stderr
    executed = nbformat.read(tmp_path / "three.ipynb", as_version=4)
    assert executed.metadata["kernelspec"]["display_name"] == "Python 3 (multi-rank, 3 ranks)"
    assert executed.metadata["nbdist"]["nproc"] == 3
    nb.metadata["kernelspec"]["name"] = "no-such-kernel"
    nbformat.write(nb, src)
    done = subprocess.run([str(NBDIST), "run", str(src)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "no kernelspec 'no-such-kernel'" in done.stderr


BARS = ("from tqdm import tqdm\nimport time\n"
        "for i in tqdm(range(30), desc=f'rank{rank}', ncols=60, mininterval=0):\n"
        "    time.sleep(0.01)\n")


def test_cli_run_shows_each_ranks_final_bar_once_without_a_terminal(tmp_path):
    src = tmp_path / "bars.ipynb"
    nbformat.write(notebook(BARS), src)
    done = subprocess.run([str(NBDIST), "run", str(src), "--kernel", "nbdist-test-2"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    bars = [line for line in done.stderr.splitlines() if "30/30" in line]
    assert sorted(b.split(":")[0] for b in bars) == ["[rank 0] rank0", "[rank 1] rank1"]
    assert "\x1b[" not in done.stderr and "\r" not in done.stderr


@pytest.mark.slow
def test_cli_run_redraws_bars_in_place_on_a_terminal(tmp_path):
    import pexpect

    src = tmp_path / "bars.ipynb"
    nbformat.write(notebook(BARS + "print('after the bars')"), src)
    child = pexpect.spawn(str(NBDIST), ["run", str(src), "--kernel", "nbdist-test-2"],
                          encoding="utf-8", dimensions=(30, 120), timeout=180,
                          env={**os.environ, "TERM": "xterm"})
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    shown = child.before
    assert shown.count("\x1b[2F\x1b[J") >= 3  # the two bar lines redrawn in place
    # what stays on the screen: the final bars where they ran, then the print
    screen: list[str] = []
    for i, part in enumerate(__import__("re").split(r"\x1b\[(\d+)F\x1b\[J", shown)):
        if i % 2:
            del screen[len(screen) - int(part):]
        else:
            screen += part.replace("\r\n", "\n").splitlines()
    final = [line for line in screen if "30/30" in line]
    assert len(final) == 2, screen
    assert screen.index(final[-1]) < screen.index("[ranks 0-1] after the bars")
