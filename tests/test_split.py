"""archspec split: the exact optimum (against brute force), the chain of blocks, splits written
back as specs that compute the same function, and the command line."""
import itertools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from archspec.commands.split import parse_bytes
from archspec.design.chain import build_chain, saved_bytes, split_spec, stage_groups, state_bytes
from archspec.design.split import Costs, SplitError, dp_split, evaluate, optimal_split, uniform_cuts
from archspec.nn.compiler import compile_spec
from archspec.profiling.analytic import stage_counts
from archspec.profiling.table6 import TABLE6_OPS
from archspec.spec import dumps, load, load_spec, loads
from archspec.spec.resize import at_input_size

from .conftest import run_cli as run

pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: one thread is much faster

TINY = """
name: tiny
input: {channels: 3, size: 32x32}
stages:
  - {name: conv1, output_size: 16x16, blocks: ['conv [3x3, 8, stride 2]']}
  - {name: res2, output_size: 8x8, downsample: maxpool, blocks: ['basic [3x3, 8; 3x3, 8] x2']}
  - {name: res3, output_size: 6x6, downsample: bilinear, blocks: ['basic [3x3, 16; 3x3, 16] x2']}
  - {name: res4, output_size: 3x3, blocks: ['bottleneck [1x1, 8; 3x3, 8, stride 2; 1x1, 32] x2']}
head: {pool: avg, fc: 10}
"""
import json


# -- the algorithm -------------------------------------------------------------------------------
def brute_force(costs: Costs, k: int, limit_values=None, limit=None):
    """Every split, ranked by (max stage cost, sum of squares, cuts from the last one back)."""
    best = None
    for inner in itertools.combinations(range(1, costs.n), k - 1):
        cuts = (0,) + inner + (costs.n,)
        spans = list(zip(cuts, cuts[1:]))
        if limit_values is not None and any(sum(limit_values[a:b]) > limit for a, b in spans):
            continue
        key = (max(costs.cost(a, b) for a, b in spans),
               sum(x * x for a, b in spans for x in costs.parts(a, b)), tuple(reversed(inner)))
        if best is None or key < best[0]:
            best = (key, cuts)
    return None if best is None else best[1]


chains = st.integers(1, 8).flatmap(lambda n: st.tuples(
    st.integers(1, n),
    st.lists(st.lists(st.integers(0, 60), min_size=n, max_size=n), min_size=1, max_size=2),
    st.none() | st.tuples(st.lists(st.integers(0, 20), min_size=n, max_size=n), st.integers(0, 60))))


@settings(max_examples=400, deadline=None)
@given(chains)
def test_split_is_the_brute_force_optimum(case):
    k, components, limited = case
    costs = Costs(components[0]) if len(components) == 1 else Costs.normalised(*components)
    values, cap = limited if limited else (None, None)
    expected = brute_force(costs, k, values, cap)
    if expected is None:
        with pytest.raises(SplitError):
            optimal_split(costs, k, limit_values=values, limit=cap)
        with pytest.raises(SplitError):
            dp_split(costs, k, limit_values=values, limit=cap)
        return
    got = optimal_split(costs, k, limit_values=values, limit=cap)
    assert got.cuts == expected
    assert got.k == k and all(s > 0 for s in got.sizes)
    assert got.bottleneck == dp_split(costs, k, limit_values=values, limit=cap).bottleneck
    if values is not None:  # the memory cap holds
        assert all(sum(values[a:b]) <= cap for a, b in zip(got.cuts, got.cuts[1:]))


def test_mix_is_the_max_of_normalised_shares_exactly():
    f, m = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]
    costs = Costs.normalised(f, m)
    for a, b in itertools.combinations(range(9), 2):
        exact = max(sum(f[a:b]) / sum(f), sum(m[a:b]) / sum(m))
        assert costs.cost(a, b) / costs.scale == pytest.approx(exact)
    best = optimal_split(costs, 3)
    assert best.bottleneck == min(evaluate(costs, (0, i, j, 8)).bottleneck
                                  for i, j in itertools.combinations(range(1, 8), 2))


def test_large_random_chain_matches_the_quadratic_dp():
    rng = random.Random(7)
    values = [rng.randint(1, 10**6) for _ in range(120)]
    values[40] = 10**7  # one heavy block: wide windows for the tie-break DP
    for k in (1, 2, 7, 16, 120):
        assert optimal_split(values, k).bottleneck == dp_split(values, k).bottleneck


def test_ties_go_to_the_least_sum_of_squares():
    # 10 equal blocks in 3 stages: max 4 either way; 4+3+3 beats 4+4+2 and 2+4+4
    assert optimal_split([1] * 10, 3).sizes == (3, 3, 4)


@pytest.mark.parametrize("k", [0, -1, 6])
def test_bad_stage_counts(k):
    with pytest.raises(SplitError):
        optimal_split([1, 2, 3, 4, 5], k)
    with pytest.raises(SplitError):
        uniform_cuts(5, k)


def test_unmeetable_limit():
    with pytest.raises(SplitError):
        optimal_split([1, 1, 1, 1], 2, limit_values=[3, 3, 3, 3], limit=5)
    assert optimal_split([1, 1, 1, 1], 4, limit_values=[3, 3, 3, 3], limit=5).sizes == (1, 1, 1, 1)


def test_uniform_cuts():
    assert uniform_cuts(16, 4) == (0, 4, 8, 12, 16)
    assert uniform_cuts(18, 4) == (0, 4, 9, 13, 18)


# -- the chain -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, n, own", [("resnet50", 16, (0, 3, 7, 13, 16)),
                                          ("presnet50", 18, (0, 3, 6, 9, 12, 15, 18)),
                                          ("resnet18", 8, (0, 2, 4, 6, 8))])
def test_chain_of_blocks(name, n, own):
    spec = load_spec(name)
    chain = build_chain(spec)
    assert chain.n == n and chain.own_cuts() == own and chain.stem == ("conv1",)
    assert chain.labels[:2] == ["conv1+res2.1", "res2.2"]
    counts = stage_counts(spec)
    body = [c for s, c in counts.items() if s != "head"]
    assert sum(b.params for b in chain.blocks) == sum(c.params for c in body)
    assert sum(b.macs for b in chain.blocks) == sum(c.macs[o] for c in body for o in TABLE6_OPS)


def test_block_saved_bytes_add_up_to_the_profile():
    from archspec.profiling.profiler import profile

    spec = load_spec("resnet18")
    chain = build_chain(spec)
    prof = profile(spec, batch=2, training=False)
    assert sum(saved_bytes(chain, 2)) == sum(r.activations["saved"] for r in prof.stages if r.name != "head")
    assert sum(state_bytes(chain, "sgd")) == 12 * sum(b.params for b in chain.blocks)


# -- splits written back as specs ----------------------------------------------------------------
def _same_network(spec, new_spec, size=(32, 32)):
    """``new_spec`` loads, has the parameters and FLOPs of ``spec`` and, with the weights copied
    over in order, computes the same function (eval mode; at ``size`` to keep it quick)."""
    new = loads(dumps(new_spec))  # loads: validated, every output size checked
    a, b = stage_counts(spec), stage_counts(new)
    assert sum(c.params for c in a.values()) == sum(c.params for c in b.values())
    for op in a["head"].macs:
        assert sum(c.macs[op] for c in a.values()) == sum(c.macs[op] for c in b.values()), op
    torch.manual_seed(0)
    # compile_spec's own shape check is left out: loads() has checked every declared size
    net = compile_spec(at_input_size(spec, size), check=False)
    twin = compile_spec(at_input_size(new, size), check=False)
    src, dst = net.state_dict(), twin.state_dict()
    assert [v.shape for v in src.values()] == [v.shape for v in dst.values()]
    twin.load_state_dict(dict(zip(dst.keys(), src.values())))
    net.eval(), twin.eval()
    x = torch.randn(2, spec.input_channels, *size)
    with torch.no_grad():
        assert torch.equal(net(x), twin(x))
    return new


@settings(max_examples=10, deadline=None)
@given(st.data())
def test_split_spec_computes_the_same_function(data):
    spec = loads(TINY)
    chain = build_chain(spec)
    k = data.draw(st.integers(1, chain.n))
    inner = sorted(data.draw(st.sets(st.integers(1, chain.n - 1), min_size=k - 1, max_size=k - 1)))
    cuts = (0, *inner, chain.n)
    new = _same_network(spec, split_spec(chain, cuts))
    groups = stage_groups(new)
    assert len(groups) == k
    # each split stage holds the blocks the cuts give it
    assert [sum(g.repeat for part in grp for g in new.stage(part).blocks) for grp in groups] == [
        sum(len(b.pieces) for b in chain.blocks[a:b]) for a, b in zip(cuts, cuts[1:])]


def test_split_presnet50_stage_entries():
    spec = load_spec("presnet50")
    chain = build_chain(spec)
    # stage2 starts at res3.1 (bilinear), stage3 in the middle of res4, stage4 at res5.1
    cuts = (0, 3, 7, 9, 18)
    new = _same_network(spec, split_spec(chain, cuts))
    assert new.stage_names == ["stage1a", "stage1b", "stage2a", "stage2b", "stage3", "stage4a", "stage4b",
                               "stage4c"]
    kinds = {s.name: s.downsample.kind for s in new.stages}
    assert kinds["stage1b"] == "maxpool" and kinds["stage2a"] == "bilinear" and kinds["stage3"] == "none"
    assert new.stage("stage4c").output_size == (8, 8)


def test_split_resnet50_strided_block_brings_strided_conv():
    spec = load_spec("resnet50")
    chain = build_chain(spec)
    new = _same_network(spec, split_spec(chain, (0, 3, 7, 16)))
    assert [s.name for s in new.stages] == ["stage1a", "stage1b", "stage2", "stage3"]
    assert new.stage("stage2").downsample.kind == "strided_conv"  # res3.1 carries the stride
    assert new.stage("stage3").output_size == (7, 7)
    mid = split_spec(chain, (0, 5, 16))  # stage2 starts at res3.3: unstrided, no downsampling
    assert mid.stage("stage2").downsample.kind == "strided_conv"  # ... but holds res4.1 and res5.1
    assert mid.stage("stage2").blocks[0].convs[1].stride == 1 and mid.stage("stage2").blocks[0].repeat == 2


# -- the command line ----------------------------------------------------------------------------
def test_cli_resnet50_by_flops_writes_a_spec(tmp_path):
    out = tmp_path / "r50.yaml"
    result = run("split", "resnet50", "--stages", "4", "--by", "flops", "-o", str(out))
    assert result.exit_code == 0, result.output
    for text in ("optimal split", "spec's own: its local stages conv1+res2 | res3 | res4 | res5", "uniform",
                 "params-balanced", "DeepSpeed's 'parameters' partition", "bound total/max",
                 "Conventions: FLOPs = 2 x MACs of conv, fc, forward, per image.", "GFLOPs",
                 "The spec's own split is "):
        assert text in result.output
    assert "within 1%" not in result.output  # ResNet-50's stages are far from balanced in FLOPs
    new = load(out)
    assert len(stage_groups(new)) == 4
    spec = load_spec("resnet50")
    assert sum(c.params for c in stage_counts(new).values()) == sum(c.params for c in stage_counts(spec).values())
    # the written split is its own optimum, and its split stages keep their local_stage labels everywhere
    again = run("split", str(out), "--stages", "4", "--by", "flops")
    assert again.exit_code == 0, again.output
    assert "spec's own: its local stages stage1 | stage2 | stage3 | stage4" in again.output
    assert "The spec's own split is already optimal within 1%: its largest stage is 0.00% above" in again.output
    bal = run("balance", str(out), "--format", "csv")
    assert bal.exit_code == 0, bal.output
    assert [line.split(",")[0] for line in bal.output.splitlines()[1:]] == ["stage1", "stage2", "stage3", "stage4"]
    prof = json.loads(run("profile", str(out), "--batch", "1", "--format", "json").output)
    assert prof["local_stage_names"] == ["stage1", "stage2", "stage3", "stage4"]
    assert "local stages: stage1, stage2, stage3, stage4" in run("profile", str(out), "--batch", "1",
                                                               "--format", "md").output


def test_cli_split_counts_the_chosen_ops_and_measure():
    """--by flops counts FLOPs (2 x MACs) of --ops; --by memory the --measure's bytes + state."""
    chain = build_chain(load_spec("resnet18"))
    full = run("split", "resnet18", "--stages", "2", "--by", "flops", "--ops", "conv,fc,bn,pool")
    assert full.exit_code == 0, full.output
    assert "FLOPs = 2 x MACs of conv, fc, bn, pool" in full.output
    best = optimal_split([b.flops(("conv", "fc", "bn", "pool")) for b in chain.blocks], 2)
    assert f"{best.bottleneck / 1e9:.3f}" in full.output
    assert best.bottleneck == 2 * optimal_split([b.macs for b in chain.blocks], 2).bottleneck  # TABLE6 MACs x 2
    mem = run("split", "resnet18", "--stages", "2", "--by", "memory", "--measure", "block_outputs", "--batch", "2")
    assert mem.exit_code == 0, mem.output
    assert "memory = block_outputs (sum of residual block outputs), batch 2" in mem.output


def test_cli_memory_cap_holds():
    result = run("split", "resnet18", "--stages", "3", "--by", "flops", "--batch", "8", "--memory-cap", "120MiB")
    assert result.exit_code == 0, result.output
    chain = build_chain(load_spec("resnet18"))
    memory = [a + s for a, s in zip(saved_bytes(chain, 8), state_bytes(chain))]
    best = optimal_split([b.macs for b in chain.blocks], 3, limit_values=memory, limit=120 * 2**20)
    assert all(sum(memory[a:b]) <= 120 * 2**20 for a, b in zip(best.cuts, best.cuts[1:]))
    assert "memory cap 120.00 MiB" in result.output and "train mem" in result.output


def test_cli_time_and_mix_on_a_tiny_spec(tmp_path):
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(TINY)
    for by in ("time", "mix", "memory", "params"):
        out = tmp_path / f"{by}.yaml"
        result = run("split", str(spec_path), "--stages", "3", "--by", by, "--batch", "4", "--runs", "1", "--threads", "1",
                     "-o", str(out))
        assert result.exit_code == 0, result.output
        new = load(out)
        assert len(stage_groups(new)) == 3
        if by == "time":
            _same_network(load(spec_path), new)


@pytest.mark.parametrize("args, message", [
    (["--stages", "0"], "error: --stages must be at least 1, got 0"),
    (["--stages", "17"], "error: resnet50 has 16 blocks in its chain, so it cannot be cut into 17 stages"),
    (["--stages", "4", "--by", "flop"], "error: unknown --by 'flop' (hint: did you mean 'flops'?)"),
    (["--stages", "4", "--by", "speed"], "error: unknown --by 'speed' (hint: use one of flops, memory"),
    (["--stages", "4", "--memory-cap", "2 gigs"], "error: --memory-cap '2 gigs' is not a size"),
    (["--stages", "4", "--memory-cap", "1GiB"], "error: block conv1+res2.1 alone needs"),
    (["--stages", "2", "--batch", "1", "--memory-cap", "100MB"], "error: no split of resnet50 into 2 stages"),
])
def test_cli_errors_are_one_line(args, message):
    result = run("split", "resnet50", *args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_parse_bytes():
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("500MB") == 500 * 10**6
    assert parse_bytes("1.5 gb") == 1_500_000_000 and parse_bytes("4096") == 4096
