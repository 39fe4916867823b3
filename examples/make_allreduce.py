"""Writes examples/allreduce.ipynb (kept as code so the notebook stays reviewable)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell("# All-reduce on every rank\nEach cell runs on all ranks at once; "
                      "output streams back labelled by rank."),
    new_code_cell("import os, time\nprint(f'hello from rank {rank} of {world_size}, "
                  "pid {os.getpid()}, device {device}')"),
    new_code_cell("import torch\n"
                  "t = torch.tensor([float(rank + 1)])\n"
                  "dist.all_reduce(t)  # sum over ranks: 1 + 2 + ... + world_size\n"
                  "print(f'after all_reduce: {t.item()}')\nt.item()"),
    new_code_cell("for step in range(3):\n"
                  "    time.sleep(0.3 * (rank + 1))\n"
                  "    print(f'step {step} done', flush=True)"),
    new_code_cell("%%rank 0\nprint('only rank 0 runs this cell')"),
]

if __name__ == "__main__":
    nb = new_notebook(cells=CELLS)
    nb.metadata["kernelspec"] = {"name": "multi-rank", "display_name": "Python 3 (multi-rank)",
                                 "language": "python"}
    path = Path(__file__).with_name("allreduce.ipynb")
    nbformat.write(nb, path)
    print(f"wrote {path}")
