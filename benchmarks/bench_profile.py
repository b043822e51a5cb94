"""Time archspec's profiler against fvcore and ptflops, and check the issue's targets.

Run from the repository root (needs the test extras: ``pip install -e '.[test]'``)::

    python benchmarks/bench_profile.py                       # presnet50, 5 repeats
    python benchmarks/bench_profile.py --spec resnet50 --repeat 9 --strict

What it measures, in one run (seconds, ``time.perf_counter``; every in-process timing is warmed
up once and reported as the median of ``--repeat`` runs):

- ``archspec profile`` in process (``archspec.profiling.profiler.profile``, the CLI's defaults:
  forward and backward counts, activation memory, training-memory plans) at batch 1 and at
  batch 256: it traces on the meta device, so the two should cost the same;
- archspec's analytic counts alone (``stage_counts``: forward MACs per op class, no torch);
- fvcore ``FlopCountAnalysis(...).total()`` and ptflops ``get_model_complexity_info`` (both
  backends) at batch 1 on the same model, built on CPU beforehand (the peers need real
  tensors; building the model is timed on its own row, not charged to them);
- the cold start of ``archspec profile SPEC`` as a subprocess, process start to exit, best of
  ``--repeat`` (after one warm-up run), and its CPU time (user + system), which a loaded
  machine disturbs less than the wall clock (the target is on the wall clock).

It prints the count each tool reports next to archspec's count in that tool's convention (the
formulas of tests/test_profile_peers.py), so that the time ratios compare like with like:
archspec's profile does much more than count forward MACs, its analytic counts do exactly that.

Targets (printed PASS/FAIL; with ``--strict`` a FAIL exits 1): cold start < 2.5 s, and the
profile at batch 256 <= 1.3 x the profile at batch 1. The peers run with ``--threads`` intra-op
threads (default 1: batch 1 gains little from more, and a shared machine is not slowed down).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import resource
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLD_START_TARGET_S = 2.5
BATCH_RATIO_TARGET = 1.3


def median_time(fn, repeat: int) -> float:
    """Warm up once, then the median of ``repeat`` timed calls."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cli_command(spec: str) -> list[str]:
    """``archspec profile SPEC``: the installed console script next to this interpreter, else
    the checkout's ``cli.py``."""
    script = Path(sys.executable).parent / "archspec"
    if script.exists():
        return [str(script), "profile", spec]
    found = shutil.which("archspec")
    return [found, "profile", spec] if found else [sys.executable, str(ROOT / "cli.py"), "profile", spec]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cold_start(spec: str, repeat: int) -> tuple[float, float]:
    """Best of ``repeat`` runs of the CLI in a fresh process (after one warm-up run): wall-clock
    seconds, and the CPU seconds (user + system) of the fastest-CPU run, which a loaded machine
    disturbs less."""
    cmd = cli_command(spec)
    times, cpus = [], []
    for i in range(repeat + 1):
        cpu = _children_cpu()
        start = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
        if i:  # the first run warms the file cache and the bytecode
            times.append(elapsed)
            cpus.append(_children_cpu() - cpu)
    return min(times), min(cpus)


@contextlib.contextmanager
def quiet():
    """ptflops prints, fvcore and torch.jit warn."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="presnet50", help="a named spec or a YAML path (default presnet50)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the peers (default 1)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    t0 = time.perf_counter()
    import torch
    from fvcore.nn import FlopCountAnalysis
    from ptflops import get_model_complexity_info

    from archspec.nn.compiler import compile_spec
    from archspec.profiling.analytic import stage_counts
    from archspec.profiling.profiler import profile
    from archspec.spec import load_spec
    from tests.test_profile_peers import archspec_counts, fvcore_macs, ptflops_aten_macs, ptflops_pytorch_macs
    import_s = time.perf_counter() - t0

    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    shape = (spec.input_channels, *spec.input_size)
    x = torch.randn(1, *shape)
    torch.manual_seed(0)
    net = compile_spec(spec, check=False).eval()

    results: dict[str, dict] = {}

    def fvcore_total():
        with quiet(), torch.no_grad():
            flops = FlopCountAnalysis(net, x)
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            results["fvcore"] = flops.total()

    def ptflops_total(backend):
        def run():
            with quiet(), torch.no_grad():
                macs, _ = get_model_complexity_info(net, shape, input_constructor=lambda _: x, as_strings=False,
                                                    print_per_layer_stat=False, backend=backend, ost=io.StringIO())
            results[f"ptflops_{backend}"] = macs
        return run

    def build():
        torch.manual_seed(0)
        compile_spec(spec, check=False)

    def prof(batch):
        return lambda: results.__setitem__(f"profile_{batch}", profile(spec, batch=batch))

    print(f"spec {spec.name}, input {'x'.join(map(str, spec.input_size))}; torch {torch.__version__}, "
          f"{args.threads} thread(s) for the peers; median of {args.repeat} after 1 warm-up "
          f"(imports took {import_s:.2f} s)", flush=True)
    t = {
        "archspec profile, batch 1": median_time(prof(1), args.repeat),
        "archspec profile, batch 256": median_time(prof(256), args.repeat),
        "archspec analytic counts (forward)": median_time(lambda: stage_counts(spec), args.repeat),
        "compile_spec on CPU (peers' model)": median_time(build, args.repeat),
        "fvcore FlopCountAnalysis, batch 1": median_time(fvcore_total, args.repeat),
        "ptflops backend=pytorch, batch 1": median_time(ptflops_total("pytorch"), args.repeat),
        "ptflops backend=aten, batch 1": median_time(ptflops_total("aten"), args.repeat),
    }
    cold_s, cold_cpu = cold_start(args.spec, args.repeat)
    t[f"cold start: archspec profile {args.spec} (best)"] = cold_s
    t["  its CPU time, user + system (best)"] = cold_cpu

    width = max(map(len, t))
    print(f"\n{'what':<{width}}  seconds")
    for what, s in t.items():
        print(f"{what:<{width}}  {s:8.4f}")

    b1, b256 = t["archspec profile, batch 1"], t["archspec profile, batch 256"]
    fv, pt, at = (t["fvcore FlopCountAnalysis, batch 1"], t["ptflops backend=pytorch, batch 1"],
                  t["ptflops backend=aten, batch 1"])
    an = t["archspec analytic counts (forward)"]
    print("\nratios (< 1: archspec faster)")
    print(f"  archspec profile b1 / fvcore            {b1 / fv:8.3f}")
    print(f"  archspec profile b1 / ptflops pytorch   {b1 / pt:8.3f}")
    print(f"  archspec profile b1 / ptflops aten      {b1 / at:8.3f}")
    print(f"  archspec analytic / fvcore              {an / fv:8.5f}")
    print(f"  archspec analytic / ptflops pytorch     {an / pt:8.5f}")
    print(f"  archspec profile b256 / b1              {b256 / b1:8.3f}")

    # The counts: each tool's figure next to archspec's in that tool's convention.
    counts = archspec_counts(spec)
    total = counts.pop("head")
    for c in counts.values():
        total = total + c
    doc = results["profile_1"].to_dict()["total"]["forward"]
    rows = [
        ("archspec, conv+fc (the profile's default --ops)", doc["macs"], total.macs["conv"] + total.macs["fc"]),
        ("archspec, every op class (--ops all)", sum(doc["macs_by_op"].values()), sum(total.macs.values())),
        ("fvcore: conv+fc+2bn+avgpool+interp", results["fvcore"], fvcore_macs(total)),
        ("ptflops aten: conv+fc+fc bias", results["ptflops_aten"], ptflops_aten_macs(total)),
        ("ptflops pytorch: ...+2bn+2relu+2pool+interp/4", results["ptflops_pytorch"], ptflops_pytorch_macs(total)),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'forward MACs per image':<{width}}  {'tool reports':>15}  {'archspec, same rule':>19}")
    for what, reported, ours in rows:
        print(f"{what:<{width}}  {int(reported):>15,}  {ours:>19,}  {'equal' if reported == ours else 'DIFFERENT'}")

    checks = [
        (f"cold start {cold_s:.2f} s < {COLD_START_TARGET_S} s", cold_s < COLD_START_TARGET_S),
        (f"batch 256 / batch 1 = {b256 / b1:.3f} <= {BATCH_RATIO_TARGET}", b256 <= BATCH_RATIO_TARGET * b1),
        ("every peer count equals archspec's in its convention", all(r[1] == r[2] for r in rows)),
    ]
    print("\ntargets")
    for what, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {what}")
    return 1 if args.strict and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
