"""Time a training step of each method, and archspec's SimCLR step against a hand-written loop.

Run from the repository root::

    python benchmarks/bench_train.py                                  # tiny_digits, batch 128, 16x16
    python benchmarks/bench_train.py --spec resnet18 --size 64 --batch 32 --repeat 7
    python benchmarks/bench_train.py --spec presnet50 --size 224 --batch 64 --device cuda

What it measures (one step = both views' forward, backward, optimizer step; grads cleared
before each): archspec's SimCLR, GIM and LoCo steps (``archspec.train.methods``, Adam) on the
same spec, decoders and batch, and a plain PyTorch SimCLR step written out by hand with the
same modules (stages in order, the top decoder, NT-Xent written inline, ``loss.backward()``,
``optimizer.step()``). Steps are interleaved (A B C D, B C D A, ...) after one warm-up each,
so a change in machine load hits every variant alike; each row is the median of ``--repeat``.
On the CPU the comparison uses the process CPU time per step (``time.process_time``, with
``--threads`` intra-op threads, default 1), which a shared machine disturbs less than the wall
clock; both are printed. On CUDA it uses the wall clock after ``torch.cuda.synchronize()``.

Targets (PASS/FAIL; ``--strict`` exits 1 on a FAIL): LoCo step <= 1.35 x SimCLR step, and
archspec's SimCLR step <= 1.05 x the hand-written one.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOCO_TARGET = 1.35
OVERHEAD_TARGET = 1.05


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tiny_digits")
    parser.add_argument("--size", type=int, default=None, help="input side (default: the spec's)")
    parser.add_argument("--batch", type=int, default=128, help="images per step (two views each)")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from archspec.nn.compiler import compile_spec
    from archspec.nn.decoders import DecoderConfig
    from archspec.spec import load_spec
    from archspec.spec.resize import at_input_size
    from archspec.train.methods import build_decoders, build_method, trainable_modules

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = load_spec(args.spec)
    if args.size:
        spec = at_input_size(spec, (args.size, args.size))
    g = torch.Generator().manual_seed(0)
    views = [torch.rand(args.batch, spec.input_channels, *spec.input_size, generator=g).to(device) for _ in range(2)]
    temperature = 0.1

    def setup(method):
        torch.manual_seed(0)
        net = compile_spec(spec, device=device)
        decoders = build_decoders(net, method, DecoderConfig())
        params = [p for m in trainable_modules(net, decoders) for p in m.parameters()]
        return net, decoders, params, torch.optim.Adam(params, lr=1e-4)

    def archspec_step(method):
        net, decoders, params, opt = setup(method)
        step = build_method(method, net, decoders, temperature)

        def run():
            for p in params:
                p.grad = None
            step.step(*views)
            opt.step()
        return run

    def plain_step():
        net, decoders, params, opt = setup("simclr")
        stages = [getattr(net, n) for n in net.stage_names]
        decoder = next(iter(decoders.values()))

        def run():
            for p in params:
                p.grad = None
            x = torch.cat(views)
            for stage in stages:
                x = stage(x)
            z = F.normalize(decoder(x), dim=1)
            n = z.shape[0] // 2
            logits = (z @ z.t() / temperature).fill_diagonal_(float("-inf"))
            targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
            F.cross_entropy(logits, targets).backward()
            opt.step()
        return run

    variants = {"plain SimCLR (hand-written)": plain_step(), "archspec SimCLR": archspec_step("simclr"),
                "archspec GIM": archspec_step("gim"), "archspec LoCo": archspec_step("loco")}
    cuda = device.type == "cuda"
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    names = list(variants)
    for rep in range(args.repeat + 1):
        for i in range(len(names)):  # the order rotates each round: no variant always runs first
            name = names[(i + rep) % len(names)]
            run = variants[name]
            if cuda:
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            if cuda:
                torch.cuda.synchronize()
            if rep:  # the first round warms up
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    wall = {k: statistics.median(v) for k, v in wall.items()}
    cpu = {k: statistics.median(v) for k, v in cpu.items()}
    basis = wall if cuda else cpu
    print(f"{spec.name} at {spec.input_size[0]}x{spec.input_size[1]}, batch {args.batch} (x2 views), "
          f"{device}, {args.threads} thread(s), median of {args.repeat}")
    print(f"{'step':<30} {'wall ms':>9} {'cpu ms':>9} {'vs SimCLR':>10}")
    for name in variants:
        print(f"{name:<30} {1e3 * wall[name]:>9.1f} {1e3 * cpu[name]:>9.1f} "
              f"{basis[name] / basis['archspec SimCLR']:>9.3f}x")
    loco = basis["archspec LoCo"] / basis["archspec SimCLR"]
    overhead = basis["archspec SimCLR"] / basis["plain SimCLR (hand-written)"]
    ok = True
    for label, value, target in (("LoCo / SimCLR step", loco, LOCO_TARGET),
                                 ("archspec SimCLR / hand-written", overhead, OVERHEAD_TARGET)):
        passed = value <= target
        ok &= passed
        print(f"{label}: {value:.3f} (target <= {target}) {'PASS' if passed else 'FAIL'}")
    print(f"(ratios on {'wall' if cuda else 'CPU'} time)")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
