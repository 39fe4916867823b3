"""Writes examples/train_digits.ipynb (kept as code so the notebook stays reviewable).

The README's main job: real DDP training on scikit-learn's digits with every
rank a kernel: a progress bar per rank, the loss per epoch, a checkpoint
written by rank 0 and loaded by all, and an evaluation.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# Train a digit classifier with DDP, one kernel per rank\n"
        "Every cell runs on all ranks at once. `rank`, `world_size`, `dist` (initialised) "
        "and `device` are already defined; nothing here is specific to the notebook: the "
        "same code runs under `torchrun`."),
    new_code_cell(
        "import os, tempfile, time\n"
        "import torch\n"
        "from torch import nn\n"
        "from torch.nn.parallel import DistributedDataParallel as DDP\n"
        "from torch.utils.data import DataLoader, DistributedSampler, TensorDataset\n"
        "from sklearn.datasets import load_digits\n"
        "from sklearn.model_selection import train_test_split\n"
        "from tqdm import tqdm\n"
        "\n"
        "x, y = load_digits(return_X_y=True)  # 1797 8x8 images, shipped with scikit-learn\n"
        "x_train, x_test, y_train, y_test = train_test_split(\n"
        "    x / 16.0, y, test_size=0.25, random_state=0, stratify=y)\n"
        "as_tensors = lambda a, b: TensorDataset(torch.tensor(a, dtype=torch.float32), "
        "torch.tensor(b))\n"
        "train, test = as_tensors(x_train, y_train), as_tensors(x_test, y_test)\n"
        "if rank == 0:\n"
        "    print(f'{len(train)} training and {len(test)} test images, {world_size} ranks')"),
    new_code_cell(
        "def make_model() -> nn.Module:\n"
        "    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))\n"
        "\n"
        "torch.manual_seed(0)\n"
        "model = DDP(make_model())  # DDP broadcasts rank 0's weights, averages gradients\n"
        "optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)\n"
        "sampler = DistributedSampler(train, shuffle=True, seed=0)  # a shard per rank\n"
        "loader = DataLoader(train, batch_size=32, sampler=sampler)\n"
        "print(f'rank {rank} trains on {len(sampler)} images per epoch')"),
    new_code_cell(
        "EPOCHS = 12\n"
        "bar = tqdm(total=EPOCHS * len(loader), desc=f'rank {rank}', ncols=70, "
        "mininterval=0.1)\n"
        "for epoch in range(EPOCHS):\n"
        "    sampler.set_epoch(epoch)\n"
        "    seen = torch.zeros(2)  # summed loss, images\n"
        "    for xb, yb in loader:\n"
        "        optimizer.zero_grad()\n"
        "        loss = nn.functional.cross_entropy(model(xb), yb)\n"
        "        loss.backward()\n"
        "        optimizer.step()\n"
        "        seen += torch.tensor([loss.item() * len(yb), len(yb)])\n"
        "        bar.update()\n"
        "        time.sleep(0.01)  # slow enough to watch the bars move\n"
        "    dist.all_reduce(seen)  # the loss over all ranks' shards\n"
        "    if rank == 0:\n"
        "        print(f'epoch {epoch + 1:2d}/{EPOCHS}: training loss "
        "{seen[0] / seen[1]:.4f}', flush=True)\n"
        "bar.close()"),
    new_code_cell(
        "# rank 0 writes the checkpoint; every rank waits for it, then loads it\n"
        "checkpoint = os.path.join(tempfile.gettempdir(), "
        "f\"digits-{os.environ['TORCHELASTIC_RUN_ID']}.pt\")\n"
        "if rank == 0:\n"
        "    torch.save({'model': model.module.state_dict(), 'epochs': EPOCHS}, checkpoint)\n"
        "    print(f'rank 0 saved {os.path.getsize(checkpoint)} bytes')\n"
        "dist.barrier()\n"
        "restored = make_model()\n"
        "restored.load_state_dict(torch.load(checkpoint, weights_only=True)['model'])\n"
        "same = all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(),\n"
        "                                             model.module.state_dict().values()))\n"
        "print(f'checkpoint loaded, identical to the trained weights: {same}')"),
    new_code_cell(
        "# evaluate the restored model: each rank scores its shard of the test set\n"
        "restored.eval()\n"
        "shard = DistributedSampler(test, shuffle=False)\n"
        "score = torch.zeros(2)  # correct, total\n"
        "with torch.no_grad():\n"
        "    for xb, yb in DataLoader(test, batch_size=128, sampler=shard):\n"
        "        score += torch.tensor([(restored(xb).argmax(1) == yb).sum().item(), len(yb)])\n"
        "print(f'rank {rank}: {int(score[0])}/{int(score[1])} correct on its shard')\n"
        "dist.all_reduce(score)\n"
        "accuracy = (score[0] / score[1]).item()\n"
        "dist.barrier()\n"
        "if rank == 0:\n"
        "    os.remove(checkpoint)\n"
        "f'test accuracy {accuracy:.1%}'"),
]

if __name__ == "__main__":
    nb = new_notebook(cells=CELLS)
    nb.metadata["kernelspec"] = {"name": "multi-rank", "display_name": "Python 3 (multi-rank)",
                                 "language": "python"}
    path = Path(__file__).with_name("train_digits.ipynb")
    nbformat.write(nb, path)
    print(f"wrote {path}")
