"""archspec.train.augment: SimCLR's augmentations on a batch, deterministic with a generator."""
from __future__ import annotations

import colorsys

import pytest
import torch

from archspec.train.augment import SimCLRAugment, gaussian_blur, hsv_to_rgb, rgb_to_hsv, two_views

OFF = dict(flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b=6, c=3, h=20, w=24, seed=0):
    return torch.rand(b, c, h, w, generator=_gen(seed))


def _smooth_images(b=6, size=24):
    """Smooth images with structure (gradients and a bright square), values in [0, 1]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([x, y, (x + y) / 2])
    base[:, size // 4: size // 2, size // 4: size // 2] = 1.0
    return base.expand(b, 3, size, size).clone()


def _tv(x):
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_range_and_dtype(channels):
    aug = SimCLRAugment(16)
    out = aug(_images(c=channels), _gen())
    assert out.shape == (6, channels, 16, 16) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert aug(_images(c=channels)[0], _gen()).shape == (channels, 16, 16)  # one image


def test_deterministic_with_a_generator_and_different_otherwise():
    aug = SimCLRAugment(16)
    x = _images()
    assert torch.equal(aug(x, _gen(1)), aug(x, _gen(1)))
    assert not torch.allclose(aug(x, _gen(1)), aug(x, _gen(2)))
    g = _gen(3)
    v1, v2 = aug.two_views(x, g)
    assert not torch.allclose(v1, v2)  # the generator advances between the two views
    w1, w2 = two_views(x, _gen(3), augment=aug)
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    # each image of the batch gets its own crop
    same = aug(x[:1].expand(6, -1, -1, -1), _gen(4))
    assert not torch.allclose(same[0], same[1])


def test_full_scale_crop_is_the_identity():
    aug = SimCLRAugment(24, scale=(1.0, 1.0), ratio=(1.0, 1.0), **OFF)
    x = _images(h=24, w=24)
    assert torch.allclose(aug(x, _gen()), x, atol=1e-5)


def test_crop_covers_the_requested_scale():
    """A square crop of a quarter of the area spans half the width of a horizontal ramp."""
    size = 64
    aug = SimCLRAugment(size, scale=(0.25, 0.25), ratio=(1.0, 1.0), **OFF)
    ramp = torch.linspace(0, 1, size).expand(8, 3, size, size).clone()
    out = aug(ramp, _gen())
    span = out[:, 0, 0, -1] - out[:, 0, 0, 0]
    assert torch.allclose(span, torch.full_like(span, 0.5), atol=0.05)  # sqrt(0.25) of the width
    assert not torch.allclose(out[:, 0, 0, 0], out[0, 0, 0, 0].expand(8))  # crops at various places


def test_crop_scale_range_is_respected():
    size = 40
    aug = SimCLRAugment(size, scale=(0.3, 0.6), **OFF)
    xs = torch.linspace(0, 1, size)
    ramp_x = xs.expand(200, 1, size, size)
    ramp_y = xs.view(size, 1).expand(200, 1, size, size)
    width = (aug(ramp_x, _gen(5))[:, 0, 0, -1] - aug(ramp_x, _gen(5))[:, 0, 0, 0])
    height = (aug(ramp_y, _gen(5))[:, 0, -1, 0] - aug(ramp_y, _gen(5))[:, 0, 0, 0])
    area = width * height  # on a ramp, first-to-last pixel span = crop side / image side (up to rounding)
    assert float(area.min()) > 0.3 * 0.8 and float(area.max()) < 0.6 * 1.05
    ratio = width / height
    assert float(ratio.min()) > 0.7 and float(ratio.max()) < 1.4


def test_flip_flips():
    aug = SimCLRAugment(24, scale=(1.0, 1.0), ratio=(1.0, 1.0), **{**OFF, "flip_p": 1.0})
    x = _images(h=24, w=24)
    assert torch.allclose(aug(x, _gen()), x.flip(-1), atol=1e-5)


def test_grayscale_gives_equal_channels():
    aug = SimCLRAugment(16, **{**OFF, "gray_p": 1.0})
    out = aug(_images(), _gen())
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    one = SimCLRAugment(16, **{**OFF, "gray_p": 1.0, "jitter_p": 1.0})(_images(c=1), _gen())
    assert one.shape == (6, 1, 16, 16)  # one channel: nothing to gray, no saturation or hue


def test_blur_smooths():
    aug = SimCLRAugment(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), **{**OFF, "blur_p": 1.0}, blur_sigma=(1.0, 2.0))
    x = _images(h=32, w=32)
    out = aug(x, _gen())
    assert aug.blur_kernel == 3
    assert _tv(out) < 0.7 * _tv(x)
    for image in out:  # every image smoothed
        assert _tv(image) < _tv(x[0])
    assert SimCLRAugment(224).blur_kernel == 23  # SimCLR's 10% of the image


def test_gaussian_blur_per_image_sigma_preserves_constants():
    x = torch.full((2, 3, 9, 9), 0.4)
    assert torch.allclose(gaussian_blur(x, torch.tensor([0.5, 3.0]), 5), x, atol=1e-6)
    impulse = torch.zeros(2, 1, 9, 9)
    impulse[:, :, 4, 4] = 1
    out = gaussian_blur(impulse, torch.tensor([0.5, 2.0]), 7)
    assert out[0, 0, 4, 4] > out[1, 0, 4, 4]  # wider sigma spreads more
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)


def test_hsv_round_trip_matches_colorsys():
    x = _images(b=2, h=5, w=5)
    hsv = rgb_to_hsv(x)
    expected = torch.tensor([colorsys.rgb_to_hsv(*x[0, :, 1, 2].tolist())])
    assert torch.allclose(hsv[0, :, 1, 2], expected[0], atol=1e-5)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-5)


def test_colour_jitter_changes_colours_but_not_layout():
    aug = SimCLRAugment(24, scale=(1.0, 1.0), ratio=(1.0, 1.0), **{**OFF, "jitter_p": 1.0})
    x = _smooth_images()
    out = aug(x, _gen())
    assert not torch.allclose(out, x, atol=1e-3)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    # brightness only: a scaled image
    bright = SimCLRAugment(24, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=(0.4, 0, 0, 0), **{**OFF, "jitter_p": 1.0})
    y = bright(x * 0.5, _gen())
    factor = y.flatten(1).sum(1) / (x * 0.5).flatten(1).sum(1)
    assert torch.allclose(y, (x * 0.5) * factor.view(-1, 1, 1, 1), atol=1e-5)
    assert float(factor.min()) >= 0.6 - 1e-6 and float(factor.max()) <= 1.4 + 1e-6
    # hue only: the value (max of the channels) is unchanged
    hue = SimCLRAugment(24, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=(0, 0, 0, 0.5), **{**OFF, "jitter_p": 1.0})
    z = hue(x, _gen())
    assert torch.allclose(z.max(1).values, x.max(1).values, atol=1e-5) and not torch.allclose(z, x, atol=1e-3)
