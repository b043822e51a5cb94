"""The LoCo paper's Table 6 (per-stage shares of memory and FLOPs), recomputed from a spec.

Finding (docs/profile.md): the ResNet-50 memory column is exactly each local stage's share of
*residual block outputs* (the ``block_outputs`` measure: 24:16:12:3 of 55); the FLOPs column
is matched within 0.05 points by MACs of conv, fc, batch norm and pooling with conv1 folded
into res2 and the head left out (``TABLE6_OPS``). With those definitions, PResNet-50 as
specified in Table 1 of the supplement differs from the paper's PResNet-50 columns; the
differences are printed by ``archspec profile presnet50 --paper``.
"""
from __future__ import annotations

from archspec.profiling.analytic import stage_counts
from archspec.profiling.memory import local_stage_name, local_stages
from archspec.spec.schema import Spec
from archspec.vocabulary import TABLE6_OPS

# Main paper, Table 6: share (%) of memory and FLOPs per stage; total FLOPs as printed.
PAPER_TABLE6 = {
    "resnet50": {"memory": [43.64, 29.09, 21.82, 5.45], "flops": [19.39, 25.09, 35.80, 19.73], "total": "4.14G"},
    "presnet50": {"memory": [15.46, 10.96, 19.48, 17.31, 19.48, 17.31],
                  "flops": [13.50, 14.63, 14.77, 16.62, 20.45, 20.04], "total": "4.16G"},
}


def table6(spec: Spec, ops=TABLE6_OPS) -> dict:
    """Shares per local stage (stem folded in, head left out), and the paper's where known."""
    counts = stage_counts(spec)
    groups = local_stages(spec)
    memory = [sum(counts[n].block_output_elems for n in g) for g in groups]
    flops = [sum(counts[n].macs[o] for n in g for o in ops) for g in groups]
    rows = []
    paper = PAPER_TABLE6.get(spec.name)
    for i, g in enumerate(groups):
        row = {"stage": local_stage_name(spec, g), "memory": _share(memory, i), "flops": _share(flops, i)}
        if paper and len(paper["memory"]) == len(groups):
            row.update(paper_memory=paper["memory"][i], paper_flops=paper["flops"][i])
        rows.append(row)
    total_macs = sum(c.macs[o] for c in counts.values() for o in ops)
    return {"spec": spec.name, "ops": list(ops), "rows": rows, "total_macs": total_macs,
            "paper_total": paper["total"] if paper else None}


def _share(values: list[int], i: int) -> float:
    """Percent of the total (0 when there is nothing, e.g. no residual blocks)."""
    total = sum(values)
    return 100 * values[i] / total if total else 0.0
