"""NT-Xent: SimCLR's normalised temperature-scaled cross entropy over two views."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Mean NT-Xent over the 2B embeddings of two views ``z1``, ``z2`` ([B, D] each).

    Each embedding is L2-normalised; its positive is the other view of the same image and its
    negatives are the other 2B - 2 embeddings of the batch (its own similarity is masked):

        loss_i = -log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) )
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent wants two [B, D] tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets)
