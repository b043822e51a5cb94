"""Property tests (hypothesis): random valid specs, and random corruptions of spec YAML.

1. ``specs()`` draws small, valid, canonical Specs (fast to run on a CPU). For each:
   ``infer_shapes`` succeeds, ``loads(dumps(spec)) == spec``, the compiled module produces
   exactly the predicted shapes on a real input, and its parameter counts equal the
   analytic ones, stage by stage.
2. Random corruptions of spec YAML (a generated spec's, and specs/presnet50.yaml's) either
   still load into a spec that compiles, or fail with a one-line SpecError naming
   ``x.yaml[:line]``; through the CLI, ``validate`` exits 0, or 2 with one ``error:`` line.
"""
from __future__ import annotations

import math
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archspec.errors import SpecError
from archspec.nn.compiler import check_shapes, compile_spec
from archspec.profiling.analytic import stage_params
from archspec.spec import BlockGroup, Conv, Downsample, Head, Spec, Stage, dumps, infer_shapes, loads
from archspec.spec.schema import ACTIVATIONS, BLOCK_KINDS, DOWNSAMPLE_KINDS, POOL_DOWNSAMPLES, POOL_KINDS
from archspec.spec.validate import conv_out, pool_out

from .conftest import run_cli, spec_text

PRESNET50_TEXT = spec_text("presnet50")
MAX_CHANNELS = 24
KERNELS = (1, 3, 5)
POOL_KERNELS = (1, 2, 3, 4, 5)
ERROR_LINE = re.compile(r"^x\.yaml(:\d+)?: ")

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- a strategy for valid specs -------------------------------------------------------------
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def _options(draw, kind: str, cin: int, cout: int) -> dict:
    """Block options beyond the defaults: an activation, squeeze-excitation, option A shortcuts."""
    out = {}
    if draw(st.booleans()):
        out["activation"] = draw(st.sampled_from(ACTIVATIONS))
    if draw(st.integers(0, 3)) == 0:
        out["se"] = draw(st.sampled_from([0.25, 0.5, 1.0, 0.0625]))
    if kind in ("basic", "bottleneck") and cout >= cin and draw(st.booleans()):
        out["shortcut"] = "pad"
    return out


@st.composite
def inverted_groups(draw, cin: int) -> BlockGroup:
    """[expand 1x1;] depthwise KxK; 1x1: without expansion the depthwise conv sees the block's
    input, so repeats need out == in."""
    repeat = draw(st.integers(1, 3))
    expand = draw(st.booleans())
    hidden = draw(st.integers(1, MAX_CHANNELS)) if expand else cin
    out = cin if (not expand and repeat > 1) else draw(st.integers(1, MAX_CHANNELS))
    convs = ([Conv(1, hidden, bias=draw(st.booleans()))] if expand else []) + \
        [Conv(draw(st.sampled_from(KERNELS)), hidden, groups=hidden), Conv(1, out)]
    return BlockGroup("inverted", tuple(convs), repeat, **draw(_options("inverted", cin, out)))


@st.composite
def block_groups(draw, cin: int) -> BlockGroup:
    """One block group whose convs' groups divide their input and output channels, also for
    the repeats after the first (whose input is the group's own output)."""
    kind = draw(st.sampled_from(BLOCK_KINDS))
    if kind == "inverted":
        return draw(inverted_groups(cin))
    n_convs = {"conv": draw(st.integers(1, 2)), "basic": 2, "bottleneck": 3}[kind]
    repeat = draw(st.integers(1, 3))
    convs, c, g_first = [], cin, None
    for i in range(n_convs):
        last = i == n_convs - 1
        g = draw(st.sampled_from(_divisors(c)))
        if g_first is None:
            g_first = g
        # The last conv's channels feed the first conv of the next repeat.
        mult = math.lcm(g, g_first) if (last and repeat > 1) else g
        if mult > MAX_CHANNELS:
            g, mult = 1, g_first
        channels = mult * draw(st.integers(1, MAX_CHANNELS // mult))
        convs.append(Conv(kernel=draw(st.sampled_from(KERNELS)), channels=channels, groups=g,
                          bias=draw(st.integers(0, 4)) == 0))
        c = channels
    return BlockGroup(kind=kind, convs=tuple(convs), repeat=repeat, **draw(_options(kind, cin, c)))


@st.composite
def specs(draw) -> Spec:
    cin = draw(st.integers(1, 4))
    h = draw(st.integers(8, 40))
    w = h if draw(st.booleans()) else draw(st.integers(8, 40))
    input_size = (h, w)
    prefix = draw(st.sampled_from(["s", "res", "stage", "layer", "conv", "block_", "Stage_"]))
    c = cin
    stages = []
    for si in range(draw(st.integers(1, 4))):
        ds_kind = draw(st.sampled_from(DOWNSAMPLE_KINDS))
        if ds_kind in POOL_DOWNSAMPLES:
            ds = Downsample(ds_kind, kernel=draw(st.sampled_from(POOL_KERNELS)), stride=draw(st.integers(1, 3)))
            if min(pool_out(h, ds.kernel, ds.stride), pool_out(w, ds.kernel, ds.stride)) < 1:
                ds, ds_kind = Downsample("none"), "none"  # the pool would leave nothing
            else:
                h, w = pool_out(h, ds.kernel, ds.stride), pool_out(w, ds.kernel, ds.stride)
        elif ds_kind == "bilinear":
            ds = Downsample("bilinear")
            h, w = draw(st.integers(1, h)), draw(st.integers(1, w))
        else:
            ds = Downsample(ds_kind)  # canonical: default kernel/stride, the stride lives on a conv
        groups = []
        for _ in range(draw(st.integers(1, 2))):
            group = draw(block_groups(c))
            groups.append(group)
            c = group.out_channels
        if ds_kind == "strided_conv":
            first = groups[0]
            at = draw(st.integers(0, len(first.convs) - 1))
            convs = list(first.convs)
            convs[at] = replace(convs[at], stride=draw(st.sampled_from([2, 2, 3])))
            groups[0] = replace(first, convs=tuple(convs))
        for group in groups:  # strides act in the first block of a group only
            for conv in group.convs:
                h, w = conv_out(h, conv.kernel, conv.stride), conv_out(w, conv.kernel, conv.stride)
        assert h >= 1 and w >= 1
        stages.append(Stage(name=f"{prefix}{si + 1}", output_size=(h, w), blocks=tuple(groups), downsample=ds,
                            channels=c if draw(st.booleans()) else None))
    head_ds = Downsample("none")
    if min(h, w) >= 2 and draw(st.booleans()):
        head_ds = Downsample(draw(st.sampled_from(POOL_DOWNSAMPLES)), kernel=2, stride=2)
    pool_size = draw(st.integers(1, 3))
    fc = draw(st.one_of(st.none(), st.integers(1, 10)))
    hidden = tuple(draw(st.lists(st.integers(1, 12), max_size=2))) if fc else ()
    dropout = tuple(draw(st.sampled_from([0.0, 0.1, 0.5])) for _ in hidden + (fc,)) if fc else ()
    head = Head(pool=draw(st.sampled_from(POOL_KINDS)), fc=fc, pool_size=pool_size, hidden=hidden,
                dropout=dropout if any(dropout) else (), downsample=head_ds,
                activation=draw(st.sampled_from(ACTIVATIONS)) if hidden else "relu",
                features=c * pool_size ** 2 if draw(st.booleans()) else None)
    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
    return Spec(name=draw(st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)), stages=tuple(stages),
                head=head, input_channels=cin, input_size=input_size,
                title=draw(st.one_of(st.just(""), text)), notes=draw(st.one_of(st.just(""), text)))


# -- property: valid specs load, round-trip, compile and count as predicted -------------------
@pytest.mark.slow
@settings(max_examples=60, **SETTINGS)
@given(spec=specs())
def test_valid_spec_round_trips_compiles_and_counts(spec):
    shapes = infer_shapes(spec)
    c, h, w = spec.input_channels, *spec.input_size
    for stage, shape in zip(spec.stages, shapes):
        assert shape.in_shape == (c, h, w)
        assert shape.out_shape[1:] == stage.output_size
        c, h, w = shape.out_shape

    text = dumps(spec)
    assert loads(text) == spec, text
    assert dumps(loads(text)) == text

    net = compile_spec(spec)
    assert net.stage_names == spec.stage_names
    x = torch.randn(2, spec.input_channels, *spec.input_size)
    with torch.no_grad():
        outs = net(x, outputs=net.stage_names + ["head"])
    assert list(outs) == net.stage_names + ["head"]
    for shape in shapes:
        assert tuple(outs[shape.name].shape) == (2, *shape.out_shape), shape.name
    assert tuple(outs["head"].shape) == (2, spec.head.fc or spec.features)

    params = stage_params(spec)
    assert list(params) == spec.stage_names + ["head"]
    assert sum(p.numel() for p in net.parameters()) == sum(params.values())
    for name in spec.stage_names + ["head"]:
        assert sum(p.numel() for p in getattr(net, name).parameters()) == params[name], name


# -- corruptions of spec YAML -----------------------------------------------------------------
NUMBER = re.compile(r"\d+(?:\.\d+)?")
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BLOCK_KIND = re.compile(r"\b(conv|basic|bottleneck|inverted)(?=\s*\[)")
NEW_NUMBERS = ("-3", "0", "2.5", "7", "1000", "abc")
VOCABULARY = ("name", "title", "notes", "input", "channels", "size", "stages", "output_size", "downsample",
              "blocks", "kind", "convs", "repeat", "kernel", "groups", "stride", "head", "pool", "fc", "features",
              "conv", "basic", "bottleneck", "none", "maxpool", "bilinear", "strided_conv", "avg", "max", "grps",
              "null", "true", "false", "yes", "no", "res2", "conv1", "x", "inverted", "dw", "bias", "se", "shortcut",
              "pad", "projection", "relu6", "silu", "avgpool", "pool_size", "dropout", "activation")
UNKNOWN_KINDS = ("resnext", "basik", "Basic", "bottle_neck", "dense", "conv2d", "x")
CORRUPTIONS = ("delete_line", "duplicate_line", "replace_number", "replace_word", "insert_bogus", "truncate",
               "swap_lines", "reindent", "unknown_kind")


@st.composite
def typos(draw, word: str) -> str:
    i = draw(st.integers(0, len(word) - 1))
    op = draw(st.sampled_from(["drop", "double", "swap", "case", "insert"]))
    if op == "drop" and len(word) > 1:
        return word[:i] + word[i + 1:]
    if op == "double":
        return word[:i] + word[i] + word[i:]
    if op == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == "case":
        return word[:i] + word[i].swapcase() + word[i + 1:]
    return word[:i] + draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_0123456789")) + word[i:]


def _replace_match(draw, text: str, pattern: re.Pattern, new) -> str:
    matches = list(pattern.finditer(text))
    if not matches:
        return text
    m = draw(st.sampled_from(matches))
    return text[:m.start()] + new(m.group(0)) + text[m.end():]


@st.composite
def corrupt_once(draw, text: str) -> str:
    lines = text.splitlines(keepends=True) or [""]
    kind = draw(st.sampled_from(CORRUPTIONS))
    i = draw(st.integers(0, len(lines) - 1))
    if kind == "delete_line":
        del lines[i]
    elif kind == "duplicate_line":
        lines.insert(i, lines[i])
    elif kind == "insert_bogus":
        lines.insert(draw(st.integers(0, len(lines))), "  bogus: 1\n")
    elif kind == "swap_lines":
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "reindent":
        body = lines[i].lstrip(" ")
        indent = len(lines[i]) - len(body)
        new = draw(st.sampled_from([0, 1, 2, 4, indent + 1, indent + 2, max(indent - 1, 0), max(indent - 2, 0)]))
        lines[i] = ("\t" if draw(st.booleans()) and draw(st.booleans()) else " " * new) + body
    elif kind == "truncate":
        return text[:draw(st.integers(0, len(text)))]
    elif kind == "replace_number":
        return _replace_match(draw, text, NUMBER, lambda _: draw(st.sampled_from(NEW_NUMBERS)))
    elif kind == "replace_word":
        words = sorted({m.group(0) for m in WORD.finditer(text)})
        pool = st.sampled_from(sorted(set(words) | set(VOCABULARY)))
        return _replace_match(draw, text, WORD, lambda w: draw(st.one_of(pool, typos(w))))
    elif kind == "unknown_kind":
        return _replace_match(draw, text, BLOCK_KIND, lambda _: draw(st.sampled_from(UNKNOWN_KINDS)))
    return "".join(lines)


@st.composite
def corrupted(draw, text: str) -> str:
    for _ in range(draw(st.integers(1, 2))):
        text = draw(corrupt_once(text))
    return text


def assert_loads_cleanly(text: str) -> None:
    """``loads`` gives a spec that compiles, or a one-line SpecError at x.yaml[:line]."""
    try:
        spec = loads(text, source="x.yaml")
    except SpecError as err:
        msg = str(err)
        assert "\n" not in msg, msg
        assert ERROR_LINE.match(msg), msg
        return
    try:
        net = compile_spec(spec, device="meta", check=True)
    except SpecError as err:
        pytest.fail(f"loads() accepted the spec but compile_spec refused it: {err}\n--- text ---\n{text}")
    check_shapes(net)


@pytest.mark.slow
@settings(max_examples=150, **SETTINGS)
@given(spec=specs(), data=st.data())
def test_corrupted_generated_yaml_fails_cleanly(spec, data):
    assert_loads_cleanly(data.draw(corrupted(dumps(spec)), label="corrupted"))


@pytest.mark.slow
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_corrupted_presnet50_yaml_fails_cleanly(data):
    assert_loads_cleanly(data.draw(corrupted(PRESNET50_TEXT), label="corrupted"))


@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), name=st.sampled_from(["mobilenet_v2", "vgg16_bn", "resnet20_cifar"]))
def test_corrupted_non_resnet_yaml_fails_cleanly(data, name):
    text = spec_text(name)
    assert_loads_cleanly(data.draw(corrupted(text), label="corrupted"))


def _validate_via_cli(text: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.yaml"
        path.write_text(text, encoding="utf-8")
        return run_cli("validate", str(path), catch_exceptions=True)


@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), use_presnet=st.booleans())
def test_cli_validate_on_corrupted_yaml(data, use_presnet):
    base = PRESNET50_TEXT if use_presnet else dumps(data.draw(specs(), label="spec"))
    text = data.draw(corrupted(base), label="corrupted")
    result = _validate_via_cli(text)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("ok: " if result.exit_code == 0 else "error: "), result.output


# -- fixed examples ---------------------------------------------------------------------------
def test_presnet50_text_itself_is_valid():
    assert_loads_cleanly(PRESNET50_TEXT)
    result = _validate_via_cli(PRESNET50_TEXT)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", ["training", "stages", "forward"])
def test_stage_name_clash_is_reported_by_loads(name):
    """Names of StagedNet attributes would shadow them; refused at the stage's line."""
    text = PRESNET50_TEXT.replace("name: res3\n", f"name: {name}\n")
    with pytest.raises(SpecError, match=r"^x\.yaml:\d+: "):
        loads(text, source="x.yaml")


@pytest.mark.parametrize("text", ['name: "\\U1000A000"\nstages: []\n', 'notes: "\\UABCA0000"\nstages: []\n',
                                  "title: 2020-13-45\nstages: []\n"],
                         ids=["U-escape-value", "U-escape-overflow", "bad-date"])
def test_yaml_value_errors_are_spec_errors(text):
    with pytest.raises(SpecError, match=r"^x\.yaml:\d+: "):
        loads(text, source="x.yaml")


_ONE_STAGE = "input: {{channels: 1, size: {size}}}\nstages:\n  - name: a\n    output_size: {size}\n" \
             "    blocks: ['conv [1x1, {channels}]']\nhead: {{fc: null}}\n"


@pytest.mark.parametrize("size,channels", [(10**20, 2), (8, 10**20)], ids=["size", "channels"])
def test_huge_numbers_are_spec_errors(size, channels):
    text = _ONE_STAGE.format(size=size, channels=channels)
    with pytest.raises(SpecError, match=r"^x\.yaml:\d+: .* too large"):
        loads(text, source="x.yaml")


_SMALL_SPEC = Spec(name="a", stages=(Stage(name="s1", output_size=(8, 8), downsample=Downsample("none"),
                                           blocks=(BlockGroup("conv", (Conv(kernel=1, channels=2),)),)),),
                   head=Head(pool="avg", fc=None), input_channels=1, input_size=(8, 8))
# Every character YAML or str.splitlines() treats as a line break, plus quoting and indicator characters.
_BREAKS_AND_QUOTES = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\t \\'\"#:-?&*!|>%@`[]{},a\ufeff"
_FREE_TEXT = st.one_of(st.text(st.characters(blacklist_categories=("Cs",))),
                       st.text(st.sampled_from(_BREAKS_AND_QUOTES), max_size=300))


def _assert_text_round_trips(**fields) -> None:
    spec = replace(_SMALL_SPEC, **fields)
    text = dumps(spec)
    assert loads(text) == spec, text
    assert dumps(loads(text)) == text
    # written text holds no line break but "\n", so line numbers in errors stay right
    assert "\n".join(text.splitlines()) + "\n" == text, repr(text)


@pytest.mark.parametrize("value", ["\x85", "a\x85b", "\x85\n", "a \x85b", "\u2028", "a\u2028b", "\u2029",
                                   "x\u2029 y", "\r", "a\r\nb", "\t", "\ta\t", " a", "a ", "  ", " \n ", "a\nb",
                                   "\n", "\x85" * 200, "word \u2028" * 40, "\ufeff", "\U0010ffff"])
@pytest.mark.parametrize("field", ["notes", "title", "name"])
def test_notes_with_unicode_line_breaks_round_trip(field, value):
    """Found by hypothesis: notes='\\x85' came back as ' '. PyYAML writes NEL, U+2028 and U+2029
    raw in plain and single-quoted scalars, where YAML folds them as line breaks; the writer
    double-quotes such text, so they are escapes (\\N, \\L, \\P)."""
    _assert_text_round_trips(**{field: value})  # (stage names must be identifiers, so are not free text)
    if value == "\x85":
        assert f'{field}: "\\N"\n' in dumps(replace(_SMALL_SPEC, **{field: value}))


def test_ordinary_text_is_written_as_before():
    """Only text with a YAML line break changes style; the rest is byte for byte safe_dump's."""
    import yaml

    from archspec.spec.writer import to_data

    for value in ["plain", "a: b", "it's", " lead", "multi\nline", "caf\u00e9 \u2013 \U0001f600", "yes", "1", "\t"]:
        spec = replace(_SMALL_SPEC, notes=value, title=value)
        assert dumps(spec) == yaml.safe_dump(to_data(spec), sort_keys=False, width=120, allow_unicode=True)


@settings(max_examples=300, **SETTINGS)
@given(notes=_FREE_TEXT, title=_FREE_TEXT)
def test_arbitrary_notes_and_title_round_trip(notes, title):
    """Any text without surrogates (which UTF-8 cannot hold), as specs() draws but longer (wrapped at
    the writer's width 120), or dense in line breaks and quoting characters."""
    _assert_text_round_trips(notes=notes, title=title)


def test_stride_on_a_1x1_map_keeps_the_identity_shortcut():
    """Found by hypothesis: a strided_conv stage entered at 1x1. Its stride leaves the map 1x1 and
    the channels stay 1, so the shortcut is the identity (docs/spec-format.md: a projection where
    channels or size change); the compiler used to add a projection for the stride alone (13
    parameters in the module, 10 counted)."""
    from archspec.profiling.analytic import stage_counts
    from archspec.profiling.profiler import profile

    spec = Spec(name="a", stages=(
        Stage(name="s1", output_size=(1, 1), downsample=Downsample("bilinear"),
              blocks=(BlockGroup("conv", (Conv(kernel=1, channels=1),)),)),
        Stage(name="s2", output_size=(1, 1), downsample=Downsample("strided_conv"),
              blocks=(BlockGroup("basic", (Conv(kernel=1, channels=1, stride=2), Conv(kernel=1, channels=1))),))),
        head=Head(pool="avg", fc=None), input_channels=2, input_size=(8, 8))
    assert [s.out_shape for s in infer_shapes(spec)] == [(1, 1, 1), (1, 1, 1)]
    net = compile_spec(spec)
    assert isinstance(net.s2.block1.shortcut, torch.nn.Identity)
    outs = net(torch.randn(2, 2, 8, 8), outputs=["s1", "s2", "head"])
    assert [tuple(t.shape) for t in outs.values()] == [(2, 1, 1, 1), (2, 1, 1, 1), (2, 1)]
    assert stage_params(spec) == {"s1": 4, "s2": 6, "head": 0}
    assert {name: sum(p.numel() for p in m.parameters()) for name, m in net.stages.items()} == stage_params(spec)
    analytic = stage_counts(spec)
    for row in profile(spec, batch=2, training=False).stages:
        assert row.params == analytic[row.name].params, row.name
        assert row.forward == analytic[row.name].macs, row.name
    # the stride does change a map larger than 1x1: a projection, as in ResNet
    wider = replace(spec, input_size=(16, 16), stages=(replace(spec.stages[0], output_size=(2, 2)),
                                                      replace(spec.stages[1], output_size=(1, 1))))
    net = compile_spec(wider)
    assert isinstance(net.s2.block1.shortcut, torch.nn.Sequential)
    assert sum(p.numel() for p in net.parameters()) == sum(stage_params(wider).values()) == 13
