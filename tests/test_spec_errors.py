"""Every class of bad input gives one located line: file:line, what is wrong, a hint."""
import re

import pytest

from archspec.errors import SpecError
from archspec.spec import loads

SMALL = """\
name: small
input: {channels: 3, size: 32x32}
stages:
  - name: conv1
    output_size: 16x16
    blocks:
      - conv [3x3, 16, stride 2]
  - name: res2
    output_size: 16x16
    blocks:
      - basic [3x3, 16; 3x3, 16] x2
  - name: res3
    output_size: 8x8
    downsample: bilinear
    blocks:
      - bottleneck [1x1, 16, 2 grps; 3x3, 16, 2 grps; 1x1, 64] x2
head:
  pool: avg
  fc: 10
  features: 64
"""


def error_for(text: str) -> str:
    with pytest.raises(SpecError) as info:
        loads(text, source="bad.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def line_of(text: str, needle: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


def test_small_spec_is_valid():
    spec = loads(SMALL)
    assert spec.stage_names == ["conv1", "res2", "res3"]


@pytest.mark.parametrize("edit, needle, pattern", [
    # malformed YAML
    (("  - name: res2", "  - name: res2\n   oops: [1, 2"), "oops", r"malformed YAML"),
    (("stages:", "stages: : :"), "stages:", r"malformed YAML"),
    # unknown keys, with a did-you-mean hint
    (("    output_size: 8x8", "    output_sise: 8x8"), "output_sise", r"unknown key 'output_sise' in stage.*did you mean 'output_size'"),
    (("  pool: avg", "  pool: avg\n  dropuot: 0.5"), "dropuot", r"unknown key 'dropuot' in head.*did you mean 'dropout'"),
    (("name: small", "name: small\nwidth: 2"), "width", r"unknown key 'width' in the spec"),
    # unknown block kinds
    (("basic [3x3, 16; 3x3, 16] x2", "basik [3x3, 16; 3x3, 16] x2"), "basik", r"unknown block kind 'basik'.*did you mean 'basic'"),
    (("downsample: bilinear", "downsample: nearest"), "nearest", r"unknown downsample 'nearest'"),
    # groups that do not divide channels
    (("3x3, 16, 2 grps; 1x1, 64", "3x3, 16, 3 grps; 1x1, 64"), "3 grps", r"stage 'res3' block 1 conv 2: 3 groups do not divide the conv's 16 input channels"),
    # channel / size mismatches between stages
    (("  features: 64", "  features: 128"), "features", r"head: declared features 128 but the last stage 'res3' gives 64"),
    (("    output_size: 8x8", "    output_size: 8x8\n    channels: 32"), "channels: 32", r"stage 'res3': declared channels 32 but the last block gives 64"),
    (("    output_size: 16x16\n    blocks:\n      - basic", "    output_size: 12x12\n    blocks:\n      - basic"),
     "12x12", r"stage 'res2': declared output size 12x12 is not what the stage produces \(16x16\).*add 'downsample: bilinear'"),
    # a declared output size the network does not produce
    (("    output_size: 16x16\n    blocks:\n      - conv", "    output_size: 15x15\n    blocks:\n      - conv"),
     "15x15", r"stage 'conv1': declared output size 15x15 is not what the stage produces \(16x16\)"),
    (("    output_size: 8x8", "    output_size: 20x20"), "20x20", r"bilinear downsampling to 20x20 would enlarge its 16x16 input"),
    # empty stages
    (("      - bottleneck [1x1, 16, 2 grps; 3x3, 16, 2 grps; 1x1, 64] x2", ""), "\n", r"stage 'res3': the stage has no blocks"),
    (("stages:\n  - name: conv1", "stages: []\nxstages:\n  - name: conv1"), "xstages", r"unknown key 'xstages'"),
    # non-positive or non-integer numbers
    (("basic [3x3, 16; 3x3, 16] x2", "basic [3x3, 16; 3x3, 16] x0"), "x0", r"repeat count must be a positive integer, got 0"),
    (("basic [3x3, 16; 3x3, 16] x2", "basic [3x3, 16.5; 3x3, 16] x2"), "16.5", r"channels must be a positive integer, got '16.5'"),
    (("basic [3x3, 16; 3x3, 16] x2", "basic [3x3, -16; 3x3, 16] x2"), "-16", r"channels must be a positive integer, got -16"),
    (("  fc: 10", "  fc: 2.5"), "fc: 2.5", r"fc size must be a positive integer, got '2.5'"),
    (("input: {channels: 3, size: 32x32}", "input: {channels: 0, size: 32x32}"), "input:", r"input channels must be a positive integer, got 0"),
    (("    output_size: 8x8", "    output_size: 8xeight"), "8xeight", r"output size width must be a positive integer"),
    (("3x3, 16, stride 2]", "4x4, 16, stride 2]"), "4x4", r"kernel 4x4 has an even size"),
    (("3x3, 16, stride 2]", "3x5, 16, stride 2]"), "3x5", r"kernel 3x5 is not square"),
    # notation errors
    (("basic [3x3, 16; 3x3, 16] x2", "basic 3x3, 16; 3x3, 16 x2"), "basic 3x3", r"is not in the form 'KIND \[conv; conv; \.\.\.\] xN'"),
    (("basic [3x3, 16; 3x3, 16] x2", "basic [3x3, 16, dilation 2; 3x3, 16] x2"), "dilation", r"cannot read 'dilation 2'"),
    (("basic [3x3, 16; 3x3, 16] x2", "basic [3x3, 16; 3x3, 16; 3x3, 16] x2"), "basic [", r"a basic block has 2 convs, this one has 3"),
    # strides against the stage's downsampling
    (("    downsample: bilinear\n    blocks:\n      - bottleneck [1x1, 16, 2 grps; 3x3, 16, 2 grps",
      "    downsample: bilinear\n    blocks:\n      - bottleneck [1x1, 16, 2 grps; 3x3, 16, 2 grps, stride 2"),
     "downsample: bilinear", r"a conv has a stride but the stage's downsample is 'bilinear'"),
    # names
    (("  - name: res3", "  - name: res2"), "  - name: res2\n    output_size: 8x8", r"stage name 'res2' is used twice"),
    (("  - name: res3", "  - name: head"), "name: head", r"'head' is reserved"),
    (("  - name: res3", "  - name: res 3"), "res 3", r"stage name 'res 3' is not a plain identifier"),
    (("  fc: 10\n", "  fc: 10\n  fc: 20\n"), "fc: 20", r"key 'fc' appears twice"),
])
def test_bad_input_gives_located_line(edit, needle, pattern):
    old, new = edit
    assert old in SMALL, old
    text = SMALL.replace(old, new, 1)
    message = error_for(text)
    expected_line = line_of(text, needle.split("\n")[0]) if needle.split("\n")[0] in text else None
    assert re.search(pattern, message), message
    m = re.match(r"bad\.yaml:(\d+): ", message)
    assert m, f"no file:line in {message!r}"
    if expected_line is not None and "\n" not in needle:
        assert int(m.group(1)) == expected_line, message


def test_hint_is_given_for_group_error():
    text = SMALL.replace("3x3, 16, 2 grps; 1x1, 64", "3x3, 16, 3 grps; 1x1, 64")
    assert "(hint: use a group count that divides 16, e.g. 1, 2, 4, 8, 16)" in error_for(text)


def test_groups_must_divide_output_channels_too():
    text = SMALL.replace("3x3, 16, 2 grps; 1x1, 64", "3x3, 18, 2 grps; 1x1, 64, 4 grps")
    assert error_for(text)  # 2 divides 18 and 16; 4 divides 64 but not 18
    text = SMALL.replace("3x3, 16, 2 grps; 1x1, 64", "3x3, 16, 2 grps; 1x1, 66, 4 grps")
    assert re.search(r"4 groups do not divide the conv's 66 output channels", error_for(text))


def test_empty_and_non_mapping_files():
    assert re.match(r"bad\.yaml:1: the file is empty", error_for(""))
    assert re.search(r"the spec must be a mapping", error_for("- 1\n- 2\n"))
    assert re.search(r"'stages' must be a non-empty list", error_for("name: x\nstages: []\n"))
    assert re.search(r"the spec is missing 'stages'", error_for("name: x\n"))


def test_stage_without_blocks_names_the_stage():
    text = SMALL.replace("      - bottleneck [1x1, 16, 2 grps; 3x3, 16, 2 grps; 1x1, 64] x2\n", "")
    text = text.replace("    downsample: bilinear\n    blocks:\n", "    downsample: bilinear\n    blocks: []\n")
    message = error_for(text)
    assert re.match(r"bad\.yaml:\d+: stage 'res3': the stage has no blocks", message), message
    assert int(message.split(":")[1]) == line_of(text, "blocks: []")


def test_mapping_forms_are_validated_too():
    text = SMALL.replace("      - basic [3x3, 16; 3x3, 16] x2",
                         "      - kind: basic\n        convs:\n          - {kernel: 3, channels: 16}\n"
                         "          - {kernel: 3, channels: 16, groups: 0}\n        repeat: 2")
    message = error_for(text)
    assert re.search(r"groups must be a positive integer, got 0", message)
    assert int(message.split(":")[1]) == line_of(text, "groups: 0")
    text = SMALL.replace("      - basic [3x3, 16; 3x3, 16] x2",
                         "      - kind: basic\n        convs: ['3x3, 16', '3x3, 16']\n        repeats: 2")
    assert re.search(r"unknown key 'repeats' in block.*did you mean 'repeat'", error_for(text))


def test_mapping_and_string_forms_are_equal():
    text = SMALL.replace("      - basic [3x3, 16; 3x3, 16] x2",
                         "      - kind: basic\n        convs:\n          - {kernel: 3, channels: 16}\n"
                         "          - '3x3, 16'\n        repeat: 2")
    text = text.replace("    downsample: bilinear", "    downsample: {kind: bilinear}")
    assert loads(text) == loads(SMALL)


def test_bools_are_not_numbers():
    assert re.search(r"fc size must be a positive integer, got True", error_for(SMALL.replace("fc: 10", "fc: true")))


def _labelled(labels) -> str:
    text = SMALL
    for name, label in labels.items():
        text = text.replace(f"  - name: {name}\n", f"  - name: {name}\n    local_stage: {label}\n")
    return text


def test_local_stage_labels_group_consecutive_stages():
    from archspec.profiling.memory import local_stages
    from archspec.spec import dumps

    assert local_stages(loads(SMALL)) == [["conv1", "res2"], ["res3"]]  # the stem folds by default
    spec = loads(_labelled({"res2": "first", "res3": "first"}))
    assert local_stages(spec) == [["conv1"], ["res2", "res3"]]
    assert loads(dumps(spec)) == spec and "local_stage: first" in dumps(spec)


def test_local_stage_must_be_consecutive_and_a_name():
    message = error_for(_labelled({"conv1": "a", "res2": "b", "res3": "a"}))
    assert re.match(r"bad\.yaml:\d+: stage 'res3': local_stage 'a' is split", message), message
    assert "consecutive" in message
    message = error_for(_labelled({"res2": "[1, 2]"}))
    assert re.match(r"bad\.yaml:\d+: stage 'res2': 'local_stage' must be a name", message), message
