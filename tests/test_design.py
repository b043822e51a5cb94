"""archspec design: the vectorised evaluator against the analytic counts, the designs against the
traced profiler, the written spec, reproducibility and the command's errors."""
import numpy as np
import pytest

from archspec.design import search as D
from archspec.design import space as S
from archspec.profiling.analytic import stage_counts
from archspec.profiling.memory import local_stages
from archspec.profiling.table6 import TABLE6_OPS
from archspec.vocabulary import DEFAULT_OPS
from archspec.spec import dumps, load, loads

from .conftest import run_cli as run, spec_text


@pytest.fixture(scope="module")
def six():
    """A short search (stops 5 generations after its best last improved): 6 stages, 15:20."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(D, "PATIENCE", 5)
        return D.search(6, seed=0, top=3, time_limit=30)


@pytest.mark.parametrize("n_stages", [2, 3, 6, 9])
def test_evaluator_equals_analytic_counts_of_the_written_spec(n_stages):
    rng = np.random.default_rng(n_stages)
    genes = S.mutate(rng, S.random_designs(rng, 40, n_stages), n_stages)
    counts = D.evaluate(genes, n_stages, TABLE6_OPS)
    default = D.evaluate(genes, n_stages)  # conv, fc: every command's default
    for r, row in enumerate(genes):
        spec = S.to_spec(row, n_stages)
        if r < 3:  # through YAML as well
            spec = loads(dumps(spec))
        analytic = stage_counts(spec)
        groups = local_stages(spec)
        assert len(groups) == n_stages and groups[0] == ["conv1", "res2"]
        for i, group in enumerate(groups):
            for op, got in (("conv", counts.conv), ("bn", counts.bn), ("pool", counts.pool)):
                assert got[r, i] == sum(analytic[n].macs[op] for n in group), (r, i, op)
            assert sum(analytic[n].macs["fc"] for n in group) == 0
            assert counts.flops[r, i] == sum(analytic[n].macs[o] for n in group for o in TABLE6_OPS)
            assert default.flops[r, i] == sum(analytic[n].macs[o] for n in group for o in DEFAULT_OPS)
            assert counts.params[r, i] == sum(analytic[n].params for n in group)
            assert counts.memory[r, i] == sum(analytic[n].block_output_elems for n in group)
        head = analytic["head"]
        assert (counts.head_pool[r], counts.head_fc[r], counts.head_params[r]) == (
            head.macs["pool"], head.macs["fc"], head.params)
        assert counts.total_macs[r] == sum(c.macs[o] for c in analytic.values() for o in TABLE6_OPS)
        assert default.total_macs[r] == sum(c.macs[o] for c in analytic.values() for o in DEFAULT_OPS)
        assert counts.total_params[r] == sum(c.params for c in analytic.values())


def test_random_designs_are_valid_and_shrink():
    rng = np.random.default_rng(0)
    genes = S.random_designs(rng, 200, 12)
    assert np.array_equal(S.repair(genes.copy(), 12), genes)  # canonical
    sizes = genes[:, [S.col(i, S.SIZE) for i in range(12)]]
    assert (np.diff(sizes, axis=1) < 0).all() and (sizes >= S.MIN_SIZE).all()
    for row in genes[:20]:
        loads(dumps(S.to_spec(row, 12)))  # validates shapes and groups


def test_designs_are_inside_the_band_when_traced(six):
    from archspec.profiling.profiler import profile

    assert six.designs and six.band == (15.0, 20.0)
    for d in six.designs:
        spec = d.spec()
        prof = profile(spec, batch=1, training=False)
        rows = {r.name: r for r in prof.stages}
        groups = local_stages(spec)
        flops = [sum(rows[n].forward[o] for n in g for o in DEFAULT_OPS) for g in groups]
        memory = [sum(rows[n].activations["block_outputs"] for n in g) for g in groups]
        for values, claimed in ((flops, d.flops_share), (memory, d.memory_share)):
            shares = [100 * v / sum(values) for v in values]
            assert all(15 <= s <= 20 for s in shares), shares
            assert shares == pytest.approx(claimed, abs=1e-9)
        total = sum(sum(r.forward[o] for o in DEFAULT_OPS) for r in prof.stages)
        assert total == d.total_macs and 2 * total <= D.DEFAULT_BUDGET_FLOPS  # the budget is in FLOPs
        assert sum(r.params for r in prof.stages) == d.total_params <= D.DEFAULT_BUDGET_PARAMS


def test_designs_are_ranked_and_distinct(six):
    objectives = [d.objective for d in six.designs]
    assert objectives == sorted(objectives)
    assert len({tuple(d.row) for d in six.designs}) == len(six.designs)
    best = six.designs[0]
    assert best.objective == pytest.approx(best.max_deviation + D.SLACK_WEIGHT * (1 - 2 * best.total_macs / 8.2e9))


def test_same_seed_same_designs(monkeypatch):
    monkeypatch.setattr(D, "PATIENCE", 10)
    a = D.search(4, seed=7, time_limit=30)
    b = D.search(4, seed=7, time_limit=30)
    assert a.designs and not a.cut_off
    assert [d.row.tolist() for d in a.designs] == [d.row.tolist() for d in b.designs]
    assert a.evaluated == b.evaluated


def test_time_limit_cuts_the_search_short():
    r = D.search(6, seed=1, time_limit=0.3)
    assert r.cut_off and r.seconds < 5


def test_cli_reproduces_the_committed_spec_which_loads_compiles_and_profiles(tmp_path):
    """specs/balanced6.yaml is what its notes' command writes (the search is seeded)."""
    out = tmp_path / "balanced6.yaml"
    result = run("design", "--stages", 6, "--seed", 0, "--top", 2, "-o", out)
    assert result.exit_code == 0, result.output
    assert "design 1:" in result.output and "design 2:" in result.output and "conv1+res2" in result.output
    committed = spec_text("balanced6")
    assert out.read_text().replace(str(out), "specs/balanced6.yaml") == committed
    spec = load(out)
    assert spec.name == "balanced6" and "`archspec design --stages 6 --seed 0`" in spec.title
    assert (f"archspec design --stages 6 --budget-flops 8.2G --budget-params 30M --ops conv,fc --seed 0 -o {out}"
            in spec.notes)
    from archspec.nn.compiler import compile_spec

    compile_spec(spec, device="meta", check=True)
    paper = run("profile", out, "--paper", "--ops", "conv,fc", "--format", "csv")  # block outputs, conv+fc
    assert paper.exit_code == 0, paper.output
    shares = [line.split(",")[1:3] for line in paper.output.splitlines()[1:]]
    assert len(shares) == 6 and all(15 <= float(x) <= 20 for row in shares for x in row), paper.output
    check = run("balance", out, "--measure", "block_outputs", "--check")
    assert check.exit_code == 0, check.output
    assert run("profile", out, "--batch", 1, "--format", "csv").exit_code == 0


@pytest.mark.parametrize("args, message", [
    (["--stages", 6, "--band", "20:15"], "band '20:15' is empty"),
    (["--stages", 6, "--band", "20:30"], "band 20:30 is impossible for 6 stages"),
    (["--stages", 6, "--band", "10:12"], "band 10:12 is impossible for 6 stages"),
    (["--stages", 6, "--band", "15-20"], "band '15-20' is not LO:HI"),
    (["--stages", 1], "--stages must be at least 2"),
    (["--stages", 6, "--budget-flops", "lots"], "--budget-flops 'lots' is not a number"),
    (["--stages", 6, "--budget-params", "0"], "--budget-params '0' must be at least 1"),
    (["--stages", 6, "--time-limit", 0], "Invalid value for '--time-limit'"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    result = run("design", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_no_design_found_exits_1():
    result = run("design", "--stages", 6, "--budget-flops", "1M", "--time-limit", 0.5)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: no 6-stage design with every stage inside 15:20%")


@pytest.mark.parametrize("text, value", [("4.1G", 4_100_000_000), ("25M", 25_000_000), ("750k", 750_000),
                                         ("4.1e9", 4_100_000_000), ("123456", 123_456), (" 2.5 g ", 2_500_000_000)])
def test_parse_count(text, value):
    assert D.parse_count(text) == value


def test_default_band():
    assert D.default_band(6) == (15.0, 20.0)
    assert D.default_band(4) == (22.5, 30.0)
    assert D.default_band(7) == (12.86, 17.14)
