"""The four bugs a planting exercise slipped past the tests (issue 14): each test here fails on its
bug. Loss-curve smoothing switched off, the linear probe ignoring its weight decay, the decoder
ignoring its hidden size, and ``downsample: strided_conv`` without a written stride putting the
stride on the wrong conv."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from archspec.nn.decoders import Decoder, DecoderConfig
from archspec.spec.loader import loads
from archspec.train import figures
from archspec.train.evaluate import linear_probe


# -- smoothing ------------------------------------------------------------------------------------
def test_ema_is_tensorboards_bias_corrected_average():
    got = figures.ema([1.0, 0.0, 0.0], 0.5)
    np.testing.assert_allclose(got, [1.0, 1 / 3, 1 / 7])
    np.testing.assert_allclose(figures.ema([2.0, 4.0], 0.0), [2.0, 4.0])  # 0: unchanged
    np.testing.assert_allclose(figures.ema([3.0] * 5, 0.9), [3.0] * 5)  # bias-corrected: no ramp from 0


def test_loss_figure_draws_the_smoothed_curve_over_the_raw_one():
    rng = np.random.default_rng(0)
    values = list(5 - np.arange(40) * 0.05 + rng.normal(0, 0.3, 40))
    runs = {"a": [{"step": i + 1, "loss/res5": v} for i, v in enumerate(values)]}
    fig = figures.loss_figure(runs, 0.6, None, None, None)
    lines = fig.axes[0].get_lines()
    raw = [ln for ln in lines if ln.get_alpha() is not None and ln.get_alpha() < 1]
    thick = [ln for ln in lines if ln.get_label() == "a"]
    assert len(raw) == 1 and len(thick) == 1
    np.testing.assert_allclose(raw[0].get_ydata(), values)
    np.testing.assert_allclose(thick[0].get_ydata(), figures.ema(values, 0.6))
    assert np.std(np.diff(thick[0].get_ydata())) < 0.6 * np.std(np.diff(values))  # it is smoother
    default = figures.plot_loss_curves.__defaults__[0]
    assert default == 0.6


# -- the probe's weight decay -----------------------------------------------------------------------
def test_linear_probe_weight_decay_is_applied():
    """The probe minimises mean cross-entropy + weight_decay/2 |W|^2 on standardised features, which is
    scikit-learn's multinomial LogisticRegression with C = 1 / (weight_decay x N): the same test
    accuracy at each penalty, and a strong penalty changes it."""
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    n = 600
    y = torch.arange(n) % 3
    y[:200] = 0  # imbalanced: a strong penalty leaves the bias, i.e. the class prior
    x = torch.randn(n, 4, generator=g) + torch.nn.functional.one_hot(y, 4).float()
    y_test = torch.arange(900) % 3
    x_test = torch.randn(900, 4, generator=g) + torch.nn.functional.one_hot(y_test, 4).float()
    mean, std = x.mean(0), x.std(0)
    got = {}
    for wd in (1e-4, 0.1, 1.0):
        got[wd] = linear_probe(x, y, x_test, y_test, epochs=200, weight_decay=wd)
        reference = LogisticRegression(C=1 / (wd * n), max_iter=5000, tol=1e-10).fit(((x - mean) / std).numpy(), y)
        expected = (reference.predict(((x_test - mean) / std).numpy()) == y_test.numpy()).mean()
        assert got[wd] == pytest.approx(expected, abs=1.5 / 900), wd
    assert got[1e-4] - got[1.0] > 0.1, got


# -- the decoder's hidden size ------------------------------------------------------------------------
@pytest.mark.parametrize("block", [True, False])
def test_decoder_mlp_uses_its_hidden_size(block):
    decoder = Decoder(64, DecoderConfig(block=block, hidden=37, out=11))
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 37), (37, 11)]
    default = Decoder(64, DecoderConfig(block=block, out=11))
    assert [m.out_features for m in default.modules() if isinstance(m, torch.nn.Linear)] == [64, 11]
    assert decoder(torch.zeros(2, 64, 8, 8)).shape == (2, 11)


# -- where strided_conv puts the stride ---------------------------------------------------------------
_STAGE = """
input: {{channels: 8, size: 16x16}}
stages:
  - name: a
    output_size: 8x8
    downsample: {downsample}
    blocks:
      - {block}
      - {plain}
"""


@pytest.mark.parametrize("block, downsample, strided", [
    ("bottleneck [1x1, 8; 3x3, 8; 1x1, 32] x1", "strided_conv", (0, 1, 0)),  # the 3x3: torchvision v1.5
    ("basic [3x3, 8; 3x3, 8] x1", "strided_conv", (1, 0)),  # the first conv above 1x1
    ("bottleneck [1x1, 8; 1x1, 8; 1x1, 32] x1", "strided_conv", (0, 0, 0)),  # all 1x1: the first conv
    ("bottleneck [1x1, 8; 3x3, 8, stride 2; 1x1, 32] x1", "strided_conv", (0, 1, 0)),  # written: kept
    ("bottleneck [1x1, 8; 5x5, 8; 1x1, 32] x1", "{kind: strided_conv, stride: 4}", (0, 1, 0)),
])
def test_strided_conv_places_the_stride(block, downsample, strided):
    spec = loads(_STAGE.format(block=block, plain=block.replace(", stride 2", ""), downsample=downsample).replace(
        "output_size: 8x8", "output_size: 4x4" if "stride: 4" in downsample else "output_size: 8x8"), "s.yaml")
    first, second = spec.stages[0].blocks
    stride = 4 if "stride: 4" in downsample else 2
    expected = [stride if s else 1 for s in strided]
    if not any(strided):  # all 1x1
        expected = [stride] + [1] * (len(strided) - 1)
    assert [c.stride for c in first.convs] == expected
    assert all(c.stride == 1 for c in second.convs)  # only the first block of the stage


# -- one stage-name merge (issue 14, point 4) -------------------------------------------------------
def test_compare_and_table_order_stages_alike():
    """The same inputs give the same row order in compare and in table: conv1 (the first network's)
    before the second's stem, each network's own order kept."""
    from archspec.report.compare import merge_stage_names, stage_order

    lists = [["conv1", "res2", "res3", "head"], ["stem", "res2", "res3", "res4", "head"]]
    assert merge_stage_names(lists) == ["conv1", "stem", "res2", "res3", "res4", "head"]
    docs = [{"stages": [{"name": n} for n in names]} for names in lists]
    assert stage_order(docs) == merge_stage_names(lists)
    assert merge_stage_names(reversed(lists)) == ["stem", "conv1", "res2", "res3", "res4", "head"]


# -- local stages: a concept of the spec (issue 14, point 3) ----------------------------------------
def test_local_stages_are_the_specs_with_its_labels():
    import archspec
    from archspec.spec import load_spec

    spec = load_spec("presnet50")
    assert [ls.label for ls in spec.local_stages][:2] == ["conv1+res2", "res3"]
    assert spec.local_stages is spec.local_stages  # computed once
    labelled = loads(_STAGE.format(block="basic [3x3, 8; 3x3, 8] x1", plain="basic [3x3, 8; 3x3, 8] x1",
                                   downsample="strided_conv").replace("    blocks:", "    local_stage: first\n    blocks:"),
                     "s.yaml")
    assert [(ls.label, ls.stages) for ls in labelled.local_stages] == [("first", ("a",))]
    prof = archspec.profile(spec, batch=2)
    local = prof.local_stages()
    assert [r.name for r in local] == [ls.label for ls in spec.local_stages]
    assert sum(r.params for r in local) + prof.stages[-1].params == prof.total().params  # + the head
    frame = prof.to_frame(local=True)
    assert list(frame.index) == [ls.label for ls in spec.local_stages] + ["total"]
    by_stage = prof.to_frame()
    assert frame.loc["conv1+res2", "fwd_flops"] == by_stage.loc[["conv1", "res2"], "fwd_flops"].sum()
    assert frame.loc["conv1+res2", "saved_bytes"] == by_stage.loc[["conv1", "res2"], "saved_bytes"].sum()
