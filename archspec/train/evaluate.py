"""Evaluating a representation: features of a frozen net, a linear probe and a kNN classifier.

- ``extract_features``: the globally average-pooled output of one stage (or the net's
  representation) for every item of a data set, in eval mode and without gradients.
- ``pixel_features``: the images themselves, flattened: the raw-pixel baseline that any
  representation should beat (Fashion-MNIST: about 83% with the linear probe).
- ``linear_probe``: multinomial logistic regression on standardised features (mean and standard
  deviation of the training features), full-batch L-BFGS from zero weights with a small L2
  penalty; deterministic (no random draws at all, so ``seed`` only fixes torch's RNG around it).
  Full batch: the features must fit in memory (fine for CIFAR-10 and subsets of ImageNet).
- ``knn_accuracy``: cosine-similarity kNN with the weighted vote of instance-discrimination
  papers (Wu et al. 2018, used by SimCLR/MoCo codebases): each of the k nearest training
  items votes for its class with weight exp(similarity / temperature).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader


@torch.no_grad()
def extract_features(net, dataset, stage: str | None = None, batch_size: int = 256, device="cpu"):
    """(features float32 [N, D] on the CPU, labels long [N]) for every item of ``dataset``, in order.

    ``stage``: a stage name of the StagedNet (its output is globally average-pooled; ``"head"``
    gives the head's output as is); None: ``net.representation``. The net must already be on
    ``device``; every module's train/eval mode is restored afterwards.
    """
    modes = {m: m.training for m in net.modules()}
    net.eval()
    feats, labels = [], []
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            if stage is None:
                out = net.representation(images)
            else:
                out = net(images, outputs=[stage])[stage]
                if out.ndim == 4:
                    out = out.mean(dim=(2, 3))
                elif out.ndim != 2:
                    out = out.flatten(1)
            feats.append(out.float().cpu())
            labels.append(torch.as_tensor(targets, dtype=torch.long).cpu())
    finally:
        for m, training in modes.items():
            m.training = training
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def pixel_features(dataset, batch_size: int = 256):
    """(the items' pixels float32 [N, C x S x S], labels long [N]), in order: raw-pixel features."""
    feats, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        feats.append(images.float().flatten(1))
        labels.append(torch.as_tensor(targets, dtype=torch.long))
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def _as_tensors(x, y):
    x = torch.as_tensor(x).float().reshape(len(x), -1)
    y = torch.as_tensor(y).long().reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} features but {len(y)} labels")
    return x, y


def linear_probe(train_x, train_y, test_x, test_y, epochs: int = 200, seed: int = 0,
                 weight_decay: float = 1e-4) -> float:
    """Test accuracy (in [0, 1]) of a multinomial logistic regression fitted on the training
    features: standardised features, zero initial weights, ``epochs`` L-BFGS iterations
    (strong-Wolfe line search) on the full batch, loss = cross-entropy + weight_decay/2 |W|^2."""
    train_x, train_y = _as_tensors(train_x, train_y)
    test_x, test_y = _as_tensors(test_x, test_y)
    if len(test_y) == 0:
        return float("nan")
    mean = train_x.mean(0, keepdim=True)
    std = train_x.std(0, keepdim=True).clamp_min(1e-6) if len(train_x) > 1 else torch.ones_like(mean)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    num_classes = int(max(train_y.max().item(), test_y.max().item())) + 1
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        weight = torch.zeros(xs.shape[1], num_classes, requires_grad=True)
        bias = torch.zeros(num_classes, requires_grad=True)
        opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max(1, int(epochs)), history_size=20,
                                tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(xs @ weight + bias, train_y) + 0.5 * weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        with torch.no_grad():
            pred = (xt @ weight + bias).argmax(1)
    finally:
        torch.random.set_rng_state(state)
    return float((pred == test_y).float().mean())


@torch.no_grad()
def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 20, temperature: float = 0.07,
                 chunk: int = 1024) -> float:
    """Test accuracy (in [0, 1]) of a weighted kNN on L2-normalised features: the k most
    cosine-similar training items vote with weight exp(similarity / temperature); the class with
    the largest sum wins (ties: the lower class index). Test items go ``chunk`` at a time."""
    train_x, train_y = _as_tensors(train_x, train_y)
    test_x, test_y = _as_tensors(test_x, test_y)
    if len(test_y) == 0:
        return float("nan")
    k = max(1, min(int(k), len(train_y)))
    num_classes = int(max(train_y.max().item(), test_y.max().item())) + 1
    bank = F.normalize(train_x, dim=1)
    correct = 0
    for start in range(0, len(test_y), chunk):
        q = F.normalize(test_x[start:start + chunk], dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = torch.exp((sim - 1.0) / temperature)  # shifted by the maximum cosine: no overflow
        votes = torch.zeros(len(q), num_classes).scatter_add_(1, train_y[idx], weights)
        correct += int((votes.argmax(1) == test_y[start:start + chunk]).sum())
    return correct / len(test_y)
