"""What every training loop here shares: a batch as the models' tensors, the optimisers and one
update step (the trainer's loop and the logistic-regression reference)."""

from __future__ import annotations

import torch

from training.batches import Batch


def to_torch(b: Batch) -> dict[str, torch.Tensor]:
    """A batch's features as the keyword arguments of every model's forward."""
    return {
        "user_ids": torch.from_numpy(b.user_ids),
        "user_w": torch.from_numpy(b.user_w),
        "user_index": torch.from_numpy(b.user_index),
        "item_ids": torch.from_numpy(b.item_ids),
        "item_w": torch.from_numpy(b.item_w),
    }


def labels(b: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(click, conv, action or None) of a batch, as the models' loss takes them."""
    action = None if b.action is None else torch.from_numpy(b.action)
    return torch.from_numpy(b.click), torch.from_numpy(b.conv), action


def make_optimizers(model: torch.nn.Module, lr: float, embed_lr: float) -> list:
    """Lazy (sparse) Adam for embedding tables, Adam for the dense layers; parameters held
    fixed (a fitted wide term) are left out."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sparse = [p for n, p in trained if "table" in n]
    dense = [p for n, p in trained if "table" not in n]
    return [
        torch.optim.SparseAdam(sparse, lr=embed_lr, betas=(0.9, 0.999), eps=1e-8),
        torch.optim.Adam(dense, lr=lr, betas=(0.9, 0.999), eps=1e-8),
    ]


def step(opts: list, loss: torch.Tensor) -> None:
    """One update of every optimiser from `loss`."""
    for o in opts:
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in opts:
        o.step()
