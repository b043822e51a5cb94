"""SimCLR's augmentations on a whole batch at once, in plain torch.

``SimCLRAugment(size)(batch, generator)`` takes images ``[B, C, H, W]`` in ``[0, 1]`` and returns
``[B, C, size, size]``, each image with its own random draws, in SimCLR's order:

1. random resized crop: area fraction ~ U(scale), log aspect ratio ~ U(log ratio), the crop
   inside the image (up to 10 tries per image, as torchvision; images whose 10 tries all fail
   get their first draw clamped to the image); resized to ``size`` with bilinear interpolation;
2. horizontal flip with probability ``flip_p`` (folded into the crop: crop and flip are one
   affine grid per image and a single ``F.grid_sample`` for the batch);
3. colour jitter with probability ``jitter_p``: brightness, contrast, saturation factors ~
   U(1 - j, 1 + j) (brightness and contrast floored at 0) and a hue shift ~ U(-h, h) turns
   of the colour wheel, applied in a random order per image as torchvision's ColorJitter
   (hue through RGB -> HSV -> RGB), clamped to [0, 1] after each;
4. grayscale with probability ``gray_p`` (luminance 0.299 R + 0.587 G + 0.114 B, to all channels);
5. Gaussian blur with probability ``blur_p``: sigma ~ U(blur_sigma), kernel side 2 floor(size/20) + 1
   (about 10% of the image: 23 at 224 as SimCLR, 3 at 32; at least 3), separable, reflect padding.

One-channel images get brightness and contrast only (no saturation, hue or grayscale).
Every random number comes from ``generator`` (if given; else torch's global RNG), drawn on the
generator's device in a fixed order and count per call, so a generator seeded alike gives the
same views, on any device. ``rows=(start, total)`` makes the draws of a call on the full batch
of ``total`` images and applies those of images ``start ..`` to ``batch``: a data-parallel
replica's contiguous shard gets the views the whole batch would get. Shrinking crops are not
antialiased (grid_sample samples the input at the output's pixel centres), as kornia's default.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)
_CROP_TRIES = 10


def _rand(shape, generator, device) -> torch.Tensor:
    """U(0, 1) draws made on the generator's device (so a CPU generator gives the same views
    of a batch on any device), then moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    return low + (high - low) * _rand(n, generator, device)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luminance."""
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> HSV, each in [0, 1] (hue in turns)."""
    r, g, b = x.unbind(1)
    maxc, argmax = x.max(1)
    minc = x.min(1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(argmax == 0, ((g - b) / safe) % 6.0,
                      torch.where(argmax == 1, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue)) % 1.0
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_hsv``."""
    h, s, v = x.unbind(1)
    out = []
    for n in (5.0, 3.0, 1.0):  # R, G, B
        k = (n + h * 6.0) % 6.0
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Blur each image of ``x`` [B, C, H, W] with its own ``sigma`` [B]: separable depthwise
    convolutions (one for rows, one for columns) with reflect padding."""
    b, c, h, w = x.shape
    half = kernel // 2
    t = torch.arange(kernel, dtype=x.dtype, device=x.device) - half
    k1 = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)  # [B, k]
    k1 = k1.repeat_interleave(c, 0)  # [B*C, k]
    y = x.reshape(1, b * c, h, w)
    mode = "reflect" if min(h, w) > half else "replicate"
    y = F.conv2d(F.pad(y, (half, half, 0, 0), mode=mode), k1.view(b * c, 1, 1, kernel), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, half, half), mode=mode), k1.view(b * c, 1, kernel, 1), groups=b * c)
    return y.view(b, c, h, w)


class SimCLRAugment:
    """SimCLR's augmentation pipeline, vectorised over a batch (see the module doc)."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p: float = 0.5,
                 jitter=(0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8, gray_p: float = 0.2,
                 blur_p: float = 0.5, blur_sigma=(0.1, 2.0)):
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_p = float(flip_p)
        self.jitter = tuple(float(j) for j in jitter)
        self.jitter_p = float(jitter_p)
        self.gray_p = float(gray_p)
        self.blur_p = float(blur_p)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.blur_kernel = max(3, 2 * (self.size // 20) + 1)

    def __repr__(self) -> str:
        return (f"SimCLRAugment(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p}, "
                f"jitter={self.jitter}, jitter_p={self.jitter_p}, gray_p={self.gray_p}, blur_p={self.blur_p}, "
                f"blur_sigma={self.blur_sigma}, blur_kernel={self.blur_kernel})")

    # ----------------------------------------------------------------------- the steps

    def _crop_boxes(self, b: int, h: int, w: int, generator, device):
        """Per image (centre x, centre y, width, height), as fractions of the input's sides."""
        area = h * w
        s = _uniform(b * _CROP_TRIES, *self.scale, generator, device).view(_CROP_TRIES, b)
        logr = _uniform(b * _CROP_TRIES, math.log(self.ratio[0]), math.log(self.ratio[1]), generator, device)
        r = torch.exp(logr).view(_CROP_TRIES, b)
        cw = torch.sqrt(s * area * r).round()  # pixels, as torchvision
        ch = torch.sqrt(s * area / r).round()
        ok = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
        first = torch.where(ok.any(0), ok.float().argmax(0), torch.full((b,), -1, device=device))
        pick = first.clamp(min=0)
        cols = torch.arange(b, device=device)
        cw, ch = cw[pick, cols], ch[pick, cols]
        # No try fits (only with extreme ratios or scales): clamp the first draw to the image.
        failed = first < 0
        cw = torch.where(failed, cw.clamp(1, w), cw)
        ch = torch.where(failed, ch.clamp(1, h), ch)
        u = _rand((2, b), generator, device)
        x0 = torch.floor(u[0] * (w - cw + 1)).clamp(max=w - cw)  # integer offsets, as torchvision
        y0 = torch.floor(u[1] * (h - ch + 1)).clamp(max=h - ch)
        return (x0 + cw / 2) / w, (y0 + ch / 2) / h, cw / w, ch / h

    def _crop_flip(self, x: torch.Tensor, generator, keep: slice, n: int) -> torch.Tensor:
        b, _, h, w = x.shape
        cx, cy, fw, fh = (t[keep] for t in self._crop_boxes(n, h, w, generator, x.device))
        flip = _rand(n, generator, x.device)[keep] < self.flip_p
        sign = torch.where(flip, -1.0, 1.0).to(x.dtype)
        theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = fw.to(x.dtype) * sign
        theta[:, 0, 2] = (2 * cx - 1).to(x.dtype)
        theta[:, 1, 1] = fh.to(x.dtype)
        theta[:, 1, 2] = (2 * cy - 1).to(x.dtype)
        grid = F.affine_grid(theta, [b, x.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _jitter(self, x: torch.Tensor, generator, keep: slice, n: int) -> torch.Tensor:
        c = x.shape[1]
        dev = x.device
        bj, cj, sj, hj = self.jitter
        apply = _rand(n, generator, dev)[keep] < self.jitter_p
        bright = _uniform(n, max(0.0, 1 - bj), 1 + bj, generator, dev)[keep]
        contrast = _uniform(n, max(0.0, 1 - cj), 1 + cj, generator, dev)[keep]
        sat = _uniform(n, max(0.0, 1 - sj), 1 + sj, generator, dev)[keep]
        hue = _uniform(n, -hj, hj, generator, dev)[keep]
        order = torch.argsort(_rand((n, 4), generator, dev)[keep], dim=1)  # a random order per image
        ops = [0, 1] + ([2, 3] if c == 3 else [])
        enabled = {0: bj > 0, 1: cj > 0, 2: sj > 0, 3: hj > 0}
        x = x.clone()
        for position in range(4):
            for op in ops:
                if not enabled[op]:
                    continue
                idx = torch.nonzero(apply & (order[:, position] == op)).flatten()
                if idx.numel() == 0:
                    continue
                sub = x[idx]
                if op == 0:
                    sub = sub * bright[idx].view(-1, 1, 1, 1)
                elif op == 1:
                    gray = grayscale(sub) if c == 3 else sub
                    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
                    f = contrast[idx].view(-1, 1, 1, 1)
                    sub = f * sub + (1 - f) * mean
                elif op == 2:
                    f = sat[idx].view(-1, 1, 1, 1)
                    sub = f * sub + (1 - f) * grayscale(sub)
                else:
                    hsv = rgb_to_hsv(sub)
                    hsv = torch.stack([(hsv[:, 0] + hue[idx].view(-1, 1, 1)) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
                    sub = hsv_to_rgb(hsv)
                x[idx] = sub.clamp(0.0, 1.0)
        return x

    def _grayscale(self, x: torch.Tensor, generator, keep: slice, n: int) -> torch.Tensor:
        pick = _rand(n, generator, x.device)[keep] < self.gray_p
        if x.shape[1] != 3 or not bool(pick.any()):
            return x
        return torch.where(pick.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)

    def _blur(self, x: torch.Tensor, generator, keep: slice, n: int) -> torch.Tensor:
        pick = _rand(n, generator, x.device)[keep] < self.blur_p
        sigma = _uniform(n, *self.blur_sigma, generator, x.device)[keep]
        idx = torch.nonzero(pick).flatten()
        if idx.numel() == 0:
            return x
        x = x.clone()
        x[idx] = gaussian_blur(x[idx], sigma[idx], self.blur_kernel)
        return x

    # ----------------------------------------------------------------------- the pipeline

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None,
                 rows: tuple[int, int] | None = None) -> torch.Tensor:
        """``batch`` [B, C, H, W] (or one image [C, H, W]) in [0, 1] -> [B, C, size, size].

        ``rows=(start, total)``: ``batch`` is images ``start .. start + B - 1`` of a batch of
        ``total``; the draws (and the generator's state after) are those of a call on all
        ``total`` images, so the result is that call's rows ``start .. start + B - 1``."""
        single = batch.ndim == 3
        x = batch.unsqueeze(0) if single else batch
        if x.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(batch.shape)}")
        b = x.shape[0]
        start, n = (0, b) if rows is None else (int(rows[0]), int(rows[1]))
        if start < 0 or start + b > n:
            raise ValueError(f"rows={rows} does not hold a batch of {b} images (want 0 <= start, start + {b} <= total)")
        keep = slice(start, start + b)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        if not x.is_floating_point():
            x = x.float()
        x = self._crop_flip(x, generator, keep, n)
        x = self._jitter(x, generator, keep, n)
        x = self._grayscale(x, generator, keep, n)
        x = self._blur(x, generator, keep, n)
        x = x.clamp(0.0, 1.0)
        return x.squeeze(0) if single else x

    def two_views(self, batch: torch.Tensor, generator: torch.Generator | None = None):
        """Two independently augmented views of ``batch`` (SimCLR's positive pairs)."""
        return self(batch, generator), self(batch, generator)


def two_views(batch: torch.Tensor, generator: torch.Generator | None = None, augment: SimCLRAugment | None = None):
    """Module-level shortcut: two views with ``augment`` (default: SimCLR's, at the batch's size)."""
    augment = augment or SimCLRAugment(batch.shape[-1])
    return augment.two_views(batch, generator)
