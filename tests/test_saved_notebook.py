"""What a saved notebook keeps of a multi-rank run, read back with nbformat and shown by
nbconvert's HTML exporter: rank labels a reader sees, one result per cell, the final bars
where they ran, no empty outputs (issue 9 points 3 and 4)."""

from __future__ import annotations

import re

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from nbformat.v4 import new_code_cell, new_notebook

CELLS = [
    # 0: a figure per rank
    "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
    "import matplotlib.pyplot as plt\n"
    "plt.figure(figsize=(2, 1.5)); plt.plot([0, rank + 1]); plt.title(f'fig of rank {rank}')\n"
    "plt.show()",
    # 1: a value per rank
    "rank * 10",
    # 2: progress bars, then a line every rank prints
    "from tqdm import tqdm\nimport time\n"
    "for i in tqdm(range(20), desc=f'rank{rank}', ncols=60, mininterval=0):\n"
    "    time.sleep(0.005)\n"
    "print('all done')",
    # 3: bars that erase themselves
    "from tqdm import tqdm\nfor i in tqdm(range(20), leave=False, mininterval=0):\n    pass",
]


def test_saved_notebook_and_its_html_show_each_rank(tmp_path):
    nb = new_notebook(cells=[new_code_cell(src) for src in CELLS])
    NotebookClient(nb, kernel_name="nbdist-test-4", timeout=180,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, path)
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    figures, values, bars, erased = (c.outputs for c in nb.cells)

    # figures: one output, a grid with a caption per rank, each rank's PNG kept
    [grid] = figures
    assert grid["data"]["text/html"].count("<img ") == 4
    kept = grid["metadata"]["nbdist"]["outputs"]
    assert [k["ranks"] for k in kept] == [[0], [1], [2], [3]]
    assert all(k["data"]["image/png"] for k in kept)

    # values: one Out[n], each rank's value labelled
    [result] = values
    assert result["output_type"] == "execute_result"
    assert result["data"]["text/plain"].splitlines() == [f"[rank {r}] {r * 10}"
                                                          for r in range(4)]

    # bars: the final bar of every rank in the display where they ran, then the line
    kinds = [(o["output_type"], o.get("name")) for o in bars]
    assert kinds == [("display_data", None), ("stream", "stdout")], kinds
    final = bars[0]["data"]["text/plain"].splitlines()
    assert [line.split("]")[0] for line in final] == [f"[rank {r}" for r in range(4)]
    assert all("20/20" in line for line in final), final
    assert bars[1]["text"] == "[ranks 0-3] all done\n"

    # bars that erased themselves leave nothing behind
    assert erased == []
    for cell in nb.cells:
        for out in cell.outputs:
            if out["output_type"] in ("display_data", "execute_result"):
                assert any(str(v).strip() for v in out["data"].values()), out

    html, _ = HTMLExporter().from_notebook_node(nb)
    body = html[html.index("<body"):]
    for r in range(4):
        assert re.search(rf">rank {r}</figcaption>", body)
        assert f"[rank {r}] {r * 10}" in body or f"rank {r}</th>" in body
    assert body.count("data:image/png;base64,") >= 4
