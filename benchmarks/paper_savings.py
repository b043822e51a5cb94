"""How close the LoCo paper's memory savings come under each definition of "memory".

Run from the repository root::

    python benchmarks/paper_savings.py            # ResNet-50 and PResNet-50 at 224x224, batch 256 and 32

The paper (Table 6 and its text) reports peak-memory savings of GIM and LoCo against end-to-end
training: ResNet-50 1.81x and 1.28x, PResNet-50 4.56x and 2.76x. Saving = end-to-end's memory /
the method's, where the method's is its largest local stage (GIM) or pair of adjacent local
stages (LoCo) and end-to-end's is the whole network. Definitions tried, per local stage:

- block outputs: the sum of the residual blocks' outputs (the measure that reproduces Table 6's
  memory column exactly);
- saved: the bytes autograd saves for backward (every stage's saved tensors);
- saved + decoders: plus the saved bytes of each local stage's decoder (end-to-end: the one on top);
- peak: archspec's predicted peak of a whole training step (weights, optimizer state, gradients
  as they exist, saved tensors, gradients in flight, batch and views; docs/profile.md), which a
  measured run matches (benchmarks/bench_memory.py);
- peak - static: the same less the encoder's weights and optimizer state (what a measurement that
  subtracts the memory held before the step would see, decoders' weights aside).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAPER = {"resnet50": (1.81, 1.28), "presnet50": (4.56, 2.76)}


def savings(per_stage: list[float], whole: float | None = None) -> tuple[float, float]:
    """(GIM, LoCo) savings of a per-local-stage measure: whole / max stage, whole / max adjacent pair."""
    whole = sum(per_stage) if whole is None else whole
    pairs = [per_stage[0]] + [a + b for a, b in zip(per_stage, per_stage[1:])]
    return whole / max(per_stage), whole / max(pairs)


def dynamic(plan: dict) -> int:
    """A step's peak less what is held between steps (weights and optimizer state; decoders' too)."""
    return plan["total"] - plan["weights"] - plan["optimizer"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="resnet50,presnet50")
    parser.add_argument("--batches", default="256,32")
    args = parser.parse_args(argv)

    import torch

    from archspec.nn.decoders import Decoder, DecoderConfig
    from archspec.profiling.memory import local_stages
    from archspec.profiling.profiler import profile
    from archspec.profiling.traced import trace
    from archspec.spec import load_spec

    print(f"{'spec':<10} {'batch':>5}  {'definition':<18} {'GIM':>6} {'LoCo':>6}   paper GIM / LoCo")
    for name in args.specs.split(","):
        spec = load_spec(name)
        groups = local_stages(spec)
        for batch in (int(b) for b in args.batches.split(",")):
            rows = {r.name: r for r in profile(spec, batch=2 * batch, training=False).stages}
            blocks = [sum(rows[s].activations["block_outputs"] for s in g) for g in groups]
            saved = [sum(rows[s].activations["saved"] for s in g) for g in groups]
            decoder = []
            for g in groups:
                c, h, w = rows[g[-1]].output_shape
                with torch.device("meta"):
                    dec = Decoder(c, DecoderConfig())
                x = torch.empty(2 * batch, c, h, w, device="meta", requires_grad=True)
                decoder.append(trace(dec, {"d": dec}, x, backward=False)["d"].saved_bytes)
            with_dec = [s + d for s, d in zip(saved, decoder)]
            plans = profile(spec, batch=batch).to_dict()["training_memory"]["methods"]
            measures = {
                "block outputs": savings(blocks),
                "saved": savings(saved),
                "saved + decoders": savings(with_dec, sum(saved) + decoder[-1]),
                "peak (archspec)": (plans["gim"]["saving_vs_simclr"], plans["loco"]["saving_vs_simclr"]),
                "peak - static": tuple(dynamic(plans["simclr"]) / dynamic(plans[m]) for m in ("gim", "loco")),
            }
            for label, (gim, loco) in measures.items():
                print(f"{name:<10} {batch:>5}  {label:<18} {gim:>5.2f}x {loco:>5.2f}x   {PAPER[name][0]:.2f}x / "
                      f"{PAPER[name][1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
