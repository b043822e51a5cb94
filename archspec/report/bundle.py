"""``archspec report``: one folder with every table and plot for a spec against others, and an
index.md that explains them. Everything in it is a pure function of the specs and the settings
(no dates, no versions, no timings), so regenerating it reproduces the committed files."""
from __future__ import annotations

from pathlib import Path

from archspec.errors import UserError
from archspec.io import make_dir
from archspec.vocabulary import DEFAULT_MEASURE, DEFAULT_OPS, TABLE6_OPS, conventions_line

COMMAND = "archspec report {spec} --against {against} -o {out}"


def _write(folder: Path, name: str, text: str, written: list[str]) -> None:
    from archspec.io import write_text_atomic

    write_text_atomic(folder / name, text)
    written.append(name)


def build_report(specs: list, out: Path, *, batch: int = 256, ops=DEFAULT_OPS, measure: str = DEFAULT_MEASURE,
                 band=None, out_label: str | None = None, progress=None, standalone: bool = False) -> list[str]:
    """Write the report for ``specs[0]`` against ``specs[1:]`` into ``out``; returns the file names.
    ``standalone``: the .tex files are complete documents instead of fragments for \\input."""
    from archspec.profiling.profiler import profile
    from archspec.profiling.table6 import table6
    from archspec.report import table6_tables
    from archspec.report import balance as balance_mod
    from archspec.report import compare as compare_mod
    from archspec.report import profile_tables
    from archspec.report.arch_table import render_arch_table
    from archspec.report.plots import plot_shares, shares_caption

    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"specs must differ, got {', '.join(names)} (hint: give each spec once)")
    make_dir(out)
    written: list[str] = []
    tick = progress or (lambda what: None)

    profiles = []
    for spec in specs:
        tick(f"profiling {spec.name}")
        profiles.append(profile(spec, batch=batch, ops=tuple(ops)).to_dict())
    tick("writing tables")
    for doc in profiles:
        for fmt in ("md", "csv", "json", "tex"):
            _write(out, f"profile-{doc['spec']}.{fmt}", profile_tables.render(doc, fmt, measure, standalone), written)
    balances = [balance_mod.balance_from_profile(doc, band, measure) for doc in profiles]
    for doc in balances:
        for fmt in ("md", "csv", "json", "tex"):
            _write(out, f"balance-{doc['spec']}.{fmt}", balance_mod.render(doc, fmt, standalone), written)
    comparison = compare_mod.compare_docs(profiles, measure)
    for fmt in ("md", "csv", "json", "tex"):
        _write(out, f"compare.{fmt}", compare_mod.render(comparison, fmt, standalone), written)
    for fmt in ("md", "tex"):
        _write(out, f"architecture.{fmt}", render_arch_table(specs, fmt, standalone=standalone and fmt == "tex", ops=tuple(ops)),
               written)
    paper_views = [view for view in (table6(spec, TABLE6_OPS) for spec in specs) if "paper_memory" in view["rows"][0]]
    if paper_views:
        _write(out, "table6.md", "\n".join(table6_tables.render(v, "md") for v in paper_views), written)
    tick("plotting")
    written += [p.name for p in plot_shares(balances, out / "shares")]
    label = out_label or str(out)
    _write(out, "index.md", index_markdown(specs, profiles, balances, paper_views, written, label,
                                           shares_caption(balances)), written)
    return written


# -- index.md -----------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{x:.2f}%"


def _largest(doc: dict, metric: str) -> dict:
    return max(doc["stages"], key=lambda r: r[f"{metric}_share"])


def _smallest(doc: dict, metric: str) -> dict:
    return min(doc["stages"], key=lambda r: r[f"{metric}_share"])


def _verdict(doc: dict) -> str:
    n = doc["model_parallel"]["workers"]
    lo, hi = doc["settings"]["band"]
    if doc["balanced"]:
        return f"every one of its {n} local stages is inside the band {lo:g}:{hi:g}% for FLOPs and memory"
    stages = sorted({o["stage"] for o in doc["outside_band"]})
    return (f"{len(stages)} of its {n} local stages fall outside the band {lo:g}:{hi:g}% "
            f"({', '.join(stages)})")


def _verdict_paragraph(specs, balances: dict) -> list[str]:
    """Which network is the balanced one, in the measures that matter for local learning."""
    main = balances[specs[0].name]
    out = []
    for other_spec in specs[1:]:
        other = balances[other_spec.name]
        a, b = main["imbalance"], other["imbalance"]
        better = [m for m in ("memory", "flops") if a[m]["max_over_mean"] < b[m]["max_over_mean"]]
        name_a, name_b = specs[0].title or specs[0].name, other_spec.title or other_spec.name
        if len(better) == 2:
            head = f"{name_a} is the balanced one of the two"
        elif better:
            head = f"{name_a} is the more balanced in {better[0]} only"
        else:
            head = f"{name_a} is not more balanced than {name_b}"
        out.append(
            f"**{head}**: its largest local stage is {a['memory']['max_over_mean']:.2f}x the equal share in memory "
            f"and {a['flops']['max_over_mean']:.2f}x in FLOPs, against {b['memory']['max_over_mean']:.2f}x and "
            f"{b['flops']['max_over_mean']:.2f}x for {name_b}. That is what local learning and model parallelism "
            "need: GIM's peak memory is set by its largest local stage (and LoCo's by its largest pair), and a "
            "pipeline runs at the pace of its slowest stage. Hence the memory savings "
            f"({main['training_memory']['gim']['saving_vs_simclr']:.2f}x vs "
            f"{other['training_memory']['gim']['saving_vs_simclr']:.2f}x for GIM, "
            f"{main['training_memory']['loco']['saving_vs_simclr']:.2f}x vs "
            f"{other['training_memory']['loco']['saving_vs_simclr']:.2f}x for LoCo) and the pipeline efficiencies "
            f"({100 * main['model_parallel']['efficiency']:.0f}% vs {100 * other['model_parallel']['efficiency']:.0f}%).")
    if not main["balanced"]:
        lo, hi = main["settings"]["band"]
        worst = sorted(main["outside_band"], key=lambda o: -abs(o["share"] - 100 / main["model_parallel"]["workers"]))
        parts = ", ".join(f"{o['stage']} {o['metric']} {o['share']:.2f}%" for o in worst[:3])
        out += ["", f"The band {lo:g}:{hi:g}% is a strict test, and {specs[0].title or specs[0].name} as specified "
                f"does not pass it everywhere: furthest out are {parts}. `archspec balance {specs[0].name} --check` "
                "exits 1 for it; `archspec split` and `archspec design` (docs/design.md) find splits and networks "
                "that pass."]
    return out


def _side_by_side(specs, balances: dict) -> list[str]:
    """A small markdown table: the balance figures of every spec in one place."""
    rows = [
        ("local stages (N)", lambda d: str(d["model_parallel"]["workers"])),
        ("stages outside the band", lambda d: f"{len({o['stage'] for o in d['outside_band']})} "
                                              f"(band {d['settings']['band'][0]:g}:{d['settings']['band'][1]:g}%)"),
        ("largest memory share / equal share", lambda d: f"{_largest(d, 'memory')['memory_share']:.2f}% / "
                                                         f"{100 / d['model_parallel']['workers']:.2f}%"),
        ("memory max/mean, CV", lambda d: f"{d['imbalance']['memory']['max_over_mean']:.2f}, "
                                          f"{d['imbalance']['memory']['cv']:.3f}"),
        ("largest FLOPs share", lambda d: f"{_largest(d, 'flops')['flops_share']:.2f}%"),
        ("FLOPs max/mean, CV", lambda d: f"{d['imbalance']['flops']['max_over_mean']:.2f}, "
                                         f"{d['imbalance']['flops']['cv']:.3f}"),
        ("model-parallel speed bound", lambda d: f"{d['model_parallel']['speedup_bound']:.2f}x of "
                                                 f"{d['model_parallel']['workers']}x "
                                                 f"({100 * d['model_parallel']['efficiency']:.0f}%)"),
        ("GIM memory saving", lambda d: f"{d['training_memory']['gim']['saving_vs_simclr']:.2f}x"),
        ("LoCo memory saving", lambda d: f"{d['training_memory']['loco']['saving_vs_simclr']:.2f}x"),
    ]
    out = ["| | " + " | ".join(s.title or s.name for s in specs) + " |", "|---" * (len(specs) + 1) + "|"]
    for label, fn in rows:
        out.append(f"| {label} | " + " | ".join(fn(balances[s.name]) for s in specs) + " |")
    return out


def index_markdown(specs, profiles, balances, paper_views, files, out_label: str, plot_caption: str = "") -> str:
    main, others = specs[0], specs[1:]
    title = lambda s: s.title or s.name  # noqa: E731
    b = {d["spec"]: d for d in balances}
    p = {d["spec"]: d for d in profiles}
    s = balances[0]["settings"]
    cmd = COMMAND.format(spec=main.name, against=" ".join(o.name for o in others), out=out_label)
    lines = [f"# {title(main)} against {', '.join(title(o) for o in others)}", "",
             f"Generated by `{cmd}`; every number here comes from that command, and "
             "`tests/test_reports.py` checks that regenerating it reproduces the markdown and CSV files byte for byte.",
             "",
             f"**{conventions_line(s['ops'], s['measure'], batch=s['batch'], dtype=s['dtype'])}** "
             "Compute is per image, forward pass, in FLOPs = 2 x multiply-accumulates of "
             f"{', '.join(s['ops'])} (archspec's default, torchvision's and fvcore's convention; `profile-*.csv` has "
             f"every op class separately). Memory is activation memory at batch {s['batch']}, {s['dtype']} "
             f"({p[main.name]['settings']['bytes_per_element']} bytes per element), measure `{s['measure']}`: "
             f"{p[main.name]['conventions']['activation_measures'][s['measure']]}. Balance is taken over *local "
             "stages*: the stem (conv1) folds into the first residual stage and the head is left out, as local "
             "learning trains them. Peak training memory counts 2 views x batch images, SGD with momentum "
             "(docs/profile.md).", "",
             "## The short answer", ""]
    lines += _side_by_side(specs, b)
    lines.append("")
    for spec in specs:
        d = b[spec.name]
        big_m, big_f = _largest(d, "memory"), _largest(d, "flops")
        tm = d["training_memory"]
        mp = d["model_parallel"]
        lines.append(
            f"- **{title(spec)}**: {_verdict(d)}. Its largest memory stage, {big_m['name']}, holds "
            f"{_pct(big_m['memory_share'])} of activation memory against an equal share of "
            f"{_pct(100 / mp['workers'])}; its largest compute stage, {big_f['name']}, does "
            f"{_pct(big_f['flops_share'])} of the FLOPs, which caps a {mp['workers']}-worker pipeline at "
            f"{mp['speedup_bound']:.2f}x. Local learning cuts peak training memory from "
            f"{tm['simclr']['peak_bytes'] / 2**30:.1f} GiB (SimCLR) to {tm['gim']['peak_bytes'] / 2**30:.1f} GiB "
            f"(GIM, {tm['gim']['saving_vs_simclr']:.2f}x) and {tm['loco']['peak_bytes'] / 2**30:.1f} GiB "
            f"(LoCo, {tm['loco']['saving_vs_simclr']:.2f}x).")
    lines += [""] + _verdict_paragraph(specs, b)
    lines += ["", "## Why", "",
              "A residual stage's activation memory grows with channels x height x width of its blocks' outputs, "
              "while its compute grows with channels squared x height x width: halving the resolution at the same "
              "width cuts both by 4x, and doubling the width then restores compute (4x) but only doubles memory. "
              "ResNet-style networks halve the resolution and double the width at every stage, so a block's memory "
              "halves from stage to stage while its compute stays flat: memory piles up in the early, "
              "high-resolution stages, and the depth chosen per stage (3, 4, 6, 3 blocks) then piles compute into "
              "res4. "
              "A network whose stages are balanced in both must shrink its resolution more gently and adjust width "
              "and depth per stage so that both products stay near 100/N percent.", ""]
    for spec in specs:
        d = b[spec.name]
        prof = p[spec.name]
        heights = [r["output_shape"][1] for r in prof["stages"] if len(r["output_shape"]) == 3]
        sizes = " -> ".join(str(h) for h in heights)
        step = (heights[0] / heights[-1]) ** (1 / max(len(heights) - 1, 1))
        small_m = _smallest(d, "memory")
        peaks = d["training_memory"]
        mem = " / ".join(f"{r['memory_share']:.1f}" for r in d["stages"])
        flops = " / ".join(f"{r['flops_share']:.1f}" for r in d["stages"])
        lines.append(f"- {title(spec)}: output sizes {sizes} (the resolution falls {step:.2f}x per stage on "
                     f"average); memory shares {mem}%, FLOPs shares {flops}% "
                     f"({', '.join(r['name'] for r in d['stages'])}). GIM's peak is set by {peaks['gim']['peak_at']} "
                     f"and LoCo's by {peaks['loco']['peak_at']}; the smallest memory stage is {small_m['name']} "
                     f"({_pct(small_m['memory_share'])}).")
    lines += ["", "The balance of every local stage, band shaded, stages outside it hatched in red:", "",
              "![shares of FLOPs, memory and parameters per local stage](shares.png)", ""]
    if plot_caption:
        lines += [f"*{plot_caption}*", ""]
    if paper_views:
        lines += ["## Against the paper's Table 6", "",
                  "`table6.md` recomputes the LoCo paper's Table 6 (shares per local stage) in the paper's conventions "
                  "(memory = residual block outputs, FLOPs = conv+fc+bn+pool MACs) and prints the differences. "
                  "ResNet-50 reproduces the paper's memory column exactly and its FLOPs column within 0.05 points; "
                  "where a spec differs more, the spec as written (e.g. PResNet-50 from the supplement's Table 1) is "
                  "not the network the paper profiled (docs/profile.md discusses it).", ""]
        for view in paper_views:
            worst = max(view["rows"], key=lambda r: max(abs(r["memory"] - r["paper_memory"]),
                                                         abs(r["flops"] - r["paper_flops"])))
            lines.append(f"- {view['spec']}: largest difference at {worst['stage']}: memory "
                         f"{worst['memory']:.2f}% vs {worst['paper_memory']:.2f}%, FLOPs {worst['flops']:.2f}% vs "
                         f"{worst['paper_flops']:.2f}%; total {view['total_macs'] / 1e9:.2f} G MACs vs the paper's "
                         f"{view['paper_total']}.")
        lines.append("")
    lines += ["## Files", "", "| files | what they hold |", "|---|---|"]
    describe = {
        "architecture": "the architecture table (the supplement's Table 1), models side by side",
        "compare": f"per-stage params, FLOPs and `{s['measure']}` memory of every model, absolute and as shares",
        "shares": "the plot above",
        "table6": "the paper's Table 6 view and its differences (its own conventions: block outputs, "
                  "conv+fc+bn+pool)",
    }
    stems: dict[str, list[str]] = {}
    for name in sorted(files):
        stems.setdefault(name.rsplit(".", 1)[0], []).append(name)
    for stem, names in stems.items():
        kind, _, spec = stem.partition("-")
        text = {"profile": f"full per-stage profile of {spec} (every activation measure, backward FLOPs, training "
                           "memory)",
                "balance": f"balance of {spec}'s local stages: shares, band, imbalance, verdict"}.get(
            kind, describe.get(stem, ""))
        links = ", ".join(f"[{n.rsplit('.', 1)[1]}]({n})" for n in names)
        lines.append(f"| {stem}: {links} | {text} |")
    lines.append("")
    return "\n".join(lines)
