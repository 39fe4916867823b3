"""The same small training runs, under torchrun and inside the multi-rank kernel.

Each function trains a small classifier on scikit-learn's digits with one
framework, unchanged between the two launches, and returns a digest of the
final parameters: identical digests mean identical training.

    python -m torch.distributed.run --nproc-per-node 2 train_digits.py plain_ddp OUT_DIR

writes each rank's digest to OUT_DIR/digest-RANK (the workers' stdout is shared and
interleaved).
"""

from __future__ import annotations

import hashlib
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

SEED = 1234
EPOCHS = 2
BATCH = 32


def digits() -> torch.utils.data.TensorDataset:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    return torch.utils.data.TensorDataset(x, y)


def make_model() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().to(torch.float64).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def ensure_process_group() -> None:
    """Under torchrun the script initialises; in the kernel it already is."""
    if not dist.is_initialized():
        dist.init_process_group("gloo")


def plain_ddp() -> str:
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    ensure_process_group()
    data = digits()
    sampler = DistributedSampler(data, shuffle=True, seed=SEED)
    loader = DataLoader(data, batch_size=BATCH, sampler=sampler)
    model = DistributedDataParallel(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return digest(model.module)


def lightning_fit() -> str:
    import lightning as L

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    L.seed_everything(SEED, verbose=False)
    model = Classifier()
    trainer = L.Trainer(strategy="ddp", devices=int(os.environ["WORLD_SIZE"]),
                        accelerator="cpu", max_epochs=EPOCHS, deterministic=True,
                        enable_progress_bar=False, enable_checkpointing=False, logger=False,
                        enable_model_summary=False)
    loader = torch.utils.data.DataLoader(digits(), batch_size=BATCH, shuffle=True)
    trainer.fit(model, loader)
    return digest(model.net)


def accelerate_loop() -> str:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(cpu=True)
    set_seed(SEED)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(digits(), batch_size=BATCH, shuffle=True)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    for _ in range(EPOCHS):
        for x, y in loader:
            opt.zero_grad()
            accelerator.backward(nn.functional.cross_entropy(model(x), y))
            opt.step()
    return digest(accelerator.unwrap_model(model))


if __name__ == "__main__":
    result = globals()[sys.argv[1]]()
    with open(os.path.join(sys.argv[2], f"digest-{os.environ['RANK']}"), "w") as fh:
        fh.write(result)
