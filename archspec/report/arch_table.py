"""The architecture table (Table 1 of the LoCo supplement, He et al.'s Table 1) regenerated
from specs, the models side by side, as GitHub markdown or LaTeX (booktabs).

One row per stage name (the union of the specs' stage names, in order; a model without that
stage shows a dash), then the head, the parameter count and the FLOPs per image (2 x MACs of
the op classes ``ops``, default conv, fc: archspec.vocabulary).
Output sizes share one column when every model agrees on every row, otherwise each model has its
own output-size column beside its block structure.

Cell notation (both formats), each item on its own line of the cell:

    stem / plain convs     7x7, 64, stride 2
    max pool               3x3 max pool, stride 2
    bilinear resizing      bilinear to 36x36
    residual blocks        [1x1, 64; 3x3, 64; 1x1, 256] x3   (a bracket is one residual block)
    grouped conv           3x3, 256, 2 grps
    plain chain repeated   (3x3, 64; 3x3, 64) x2             (parentheses: no shortcut)

A stage whose first block differs from the rest (PResNet-50's res5-res7) has one bracket line
per block group. In markdown the convs of a bracket are separated by " · ", the repeat is "×N" and
the lines of a cell by "<br>" (GitHub renders that as a line break inside a table cell); in LaTeX
a bracket is ``\\left[\\begin{array}{l}...\\end{array}\\right]\\times 3`` in math mode.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from archspec.errors import UserError
from archspec.report.latex import LINE_PT, TeX, document, escape, table_float, tabular_width, text_width
from archspec.profiling.analytic import OP_CLASSES
from archspec.spec.kinds import KINDS
from archspec.spec.notation import block_options, format_conv
from archspec.spec.schema import POOL_DOWNSAMPLES, Conv, Spec
from archspec.vocabulary import DEFAULT_OPS, conventions_line

FORMATS = ("md", "tex")
MISSING = {"md": "-", "tex": "--"}
POOL_NAMES = {"avg": "global average pool", "max": "global max pool"}


# -- the table's content, independent of the format -------------------------------------------

@dataclass(frozen=True)
class Text:
    """A line of plain notation; ``conv`` is set when the line is one conv of a plain chain."""

    text: str
    conv: Conv | None = None


@dataclass(frozen=True)
class Bracket:
    """``[conv; conv; ...] xN``: a residual block (``[``) or a repeated plain chain (``(``)."""

    convs: tuple[Conv, ...]
    repeat: int
    residual: bool = True
    options: tuple[str, ...] = ()  # after the repeat: 'inverted', an activation, 'se 0.25', 'shortcut pad'


def _stage_lines(stage) -> list:
    lines: list = []
    ds = stage.downsample
    if ds.kind in POOL_DOWNSAMPLES:
        lines.append(Text(_pool_text(ds)))
    elif ds.kind == "bilinear":
        h, w = stage.output_size
        lines.append(Text(f"bilinear to {h}x{w}"))
    for group in stage.blocks:
        kind = KINDS[group.kind]
        options = ((kind.table_word,) if kind.table_word else ()) + tuple(block_options(group))
        if not kind.residual and group.repeat == 1 and not options:
            lines.extend(Text(format_conv(c, "x"), conv=c) for c in group.convs)
        else:
            lines.append(Bracket(tuple(group.convs), group.repeat, residual=kind.residual, options=options))
    return lines


def _pool_text(ds) -> str:
    return f"{ds.kernel}x{ds.kernel} {'max' if ds.kind == 'maxpool' else 'avg'} pool, stride {ds.stride}"


def _head_lines(spec: Spec) -> list:
    head = spec.head
    lines = [Text(_pool_text(head.downsample))] if head.downsample.kind in POOL_DOWNSAMPLES else []
    pool = POOL_NAMES.get(head.pool, head.pool)
    if head.pool_size != 1:
        pool = f"{head.pool} pool to {head.pool_size}x{head.pool_size}"
    lines.append(Text(f"{pool}, {spec.features}-d"))
    if not head.fc_layers:
        lines.append(Text("no fc (the representation is the output)"))
    for i, size in enumerate(head.fc_layers):
        drop = f"dropout {head.dropout_before(i):g}, " if head.dropout_before(i) else ""
        act = f", {head.activation}" if i < len(head.hidden) else ""
        lines.append(Text(f"{drop}{size}-d fc{act}"))
    return lines


def _size(size) -> tuple[int, int]:
    return (int(size[0]), int(size[1]))


@dataclass
class _Column:
    spec: Spec
    label: str
    cells: dict  # row key -> list of lines, or None (stage missing)
    sizes: dict  # row key -> (h, w) or None
    params: int
    flops: int  # forward FLOPs per image (2 x MACs) of the table's op classes


def flops_label(ops) -> str:
    return f"FLOPs ({', '.join(ops)})"


def _columns(specs: list[Spec], rows: list[str], ops=DEFAULT_OPS) -> list[_Column]:
    from archspec.profiling.analytic import stage_counts

    labels = [s.title or s.name for s in specs]
    if len(set(labels)) < len(labels):  # two specs with one title: tell them apart by name
        labels = [f"{s.title} ({s.name})" if s.title else s.name for s in specs]
    columns = []
    for spec, label in zip(specs, labels):
        cells, sizes = {}, {}
        for row in rows:
            stage = next((s for s in spec.stages if s.name == row), None)
            cells[row] = _stage_lines(stage) if stage else None
            sizes[row] = _size(stage.output_size) if stage else None
        cells["head"] = _head_lines(spec)
        sizes["head"] = (1, 1)
        counts = stage_counts(spec)
        columns.append(_Column(spec, label, cells, sizes,
                               params=sum(c.params for c in counts.values()),
                               flops=2 * sum(c.macs[o] for c in counts.values() for o in ops)))
    return columns


def _shared_sizes(columns: list[_Column], rows: list[str]) -> bool:
    """True when, on every row, all models that have the row agree on its output size."""
    for row in rows:
        present = {c.sizes[row] for c in columns if c.sizes[row] is not None}
        if len(present) > 1:
            return False
    return True


def _input_sizes(specs: list[Spec]) -> str:
    sizes = [f"{s.input_size[0]}x{s.input_size[1]}" for s in specs]
    if len(set(sizes)) == 1:
        return f"input {sizes[0]}"
    return "inputs " + ", ".join(f"{md_escape(s.title or s.name)} {size}" for s, size in zip(specs, sizes))


def _conventions(specs: list[Spec], times: str, ops=DEFAULT_OPS) -> str:
    """The conventions in plain words, after the models and input sizes (both formats)."""
    return ("Output sizes are height x width. "
            f"A bracket is one residual block (2 convs: basic, 3: bottleneck), each conv 'kernel, output "
            f"channels[, groups][, stride]' and followed by batch norm; ReLU follows every conv but a block's last "
            f"and the residual addition; the shortcut is a 1x1 conv + BN projection where channels or size change. "
            f"{times}N repeats a block, and a stride acts in the first block of its line only; a stage's first "
            f"block, when it differs, has its own line. 'bilinear to HxW': bilinear interpolation at the stage's "
            f"start. Params: all weights, batch norm and the fc bias included. {conventions_line(ops)} "
            f"G = 10^9; op classes not listed (of {', '.join(OP_CLASSES)}) are not counted."
            + _option_notes(specs))


def caption_text(specs: list[Spec], times: str = "x", ops=DEFAULT_OPS) -> str:
    """The conventions, in words (the markdown caption; LaTeX escapes the same words)."""
    names = ", ".join(f"{md_escape(s.title)} ({md_escape(s.name)})" if s.title else md_escape(s.name)
                      for s in specs)
    return f"Architectures of {names}; {_input_sizes(specs)}. " + _conventions(specs, times, ops)


def _option_notes(specs: list[Spec]) -> str:
    """One sentence per option the specs use beyond ResNet's (none for ResNets)."""
    groups = [g for s in specs for st in s.stages for g in st.blocks]
    convs = [c for g in groups for c in g.convs]
    notes = []
    if any(not KINDS[g.kind].residual and (g.repeat != 1 or block_options(g)) for g in groups):  # as drawn
        notes.append("Parentheses: plain conv-BN-activation layers, no shortcut.")
    notes += [kind.table_note for kind in KINDS.values() if kind.table_note and any(g.kind == kind.name for g in groups)]
    if any(c.depthwise for c in convs):
        notes.append("'dw': depthwise (as many groups as channels).")
    if any(c.bias for c in convs):
        notes.append("'bias': the conv has a bias.")
    acts = sorted({g.activation for g in groups} - {"relu"})
    if acts:
        notes.append(f"An activation after a bracket ({', '.join(acts)}) replaces ReLU in that block.")
    if any(g.se is not None for g in groups):
        notes.append("'se R': squeeze-excitation (global pool, 1x1 conv to R x channels, ReLU, 1x1 conv back, "
                     "sigmoid, product) after the depthwise conv (inverted) or the last conv.")
    if any(g.shortcut == "pad" for g in groups):
        notes.append("'shortcut pad': option A, the shortcut subsamples and appends zero channels (no parameters).")
    return "".join(" " + n for n in notes)


# -- markdown -----------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|$~])")


def md_escape(text: str) -> str:
    """User text (titles, names) for a GitHub table: one line, markup characters escaped."""
    text = " ".join(str(text).split())
    return _MD_SPECIAL.sub(r"\\\1", text).replace("<", "&lt;")


def _md_line(line) -> str:
    if isinstance(line, Text):
        return line.text
    inner = " · ".join(format_conv(c, "x") for c in line.convs)
    left, right = ("[", "]") if line.residual else ("(", ")")
    return f"{left}{inner}{right} ×{line.repeat}" + "".join(f", {o}" for o in line.options)


def md_cell(lines) -> str:
    """A cell's lines in the markdown notation (``-`` for a missing stage)."""
    if lines is None:
        return MISSING["md"]
    return "<br>".join(_md_line(x) for x in lines)


def _render_md(specs: list[Spec], rows: list[str], columns: list[_Column], ops=DEFAULT_OPS) -> str:
    shared = _shared_sizes(columns, rows)
    header = ["stage"]
    if shared:
        header += ["output size"] + [md_escape(c.label) for c in columns]
    else:
        for c in columns:
            header += [f"{md_escape(c.label)} output size", md_escape(c.label)]
    body = []
    for row in rows + ["head"]:
        cells = [md_escape(row)]
        if shared:
            size = next(c.sizes[row] for c in columns if c.sizes[row] is not None)
            cells += [f"{size[0]}x{size[1]}"] + [md_cell(c.cells[row]) for c in columns]
        else:
            for c in columns:
                size = c.sizes[row]
                cells += [f"{size[0]}x{size[1]}" if size else MISSING["md"], md_cell(c.cells[row])]
        body.append(cells)
    for label, values in (("params", [f"{c.params:,}" for c in columns]),
                          (flops_label(ops), [f"{c.flops / 1e9:.2f} G" for c in columns])):
        cells = [label]
        if shared:
            cells += [""] + values
        else:
            for v in values:
                cells += ["", v]
        body.append(cells)
    lines = [f"{caption_text(specs, '×', ops)}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines.extend("| " + " | ".join(cells) + " |" for cells in body)
    return "\n".join(lines) + "\n"


# -- LaTeX --------------------------------------------------------------------------------------

def _tex_size(size) -> str:
    return f"${size[0]}\\times {size[1]}$"


def _tex_text(line: Text) -> str:
    """One line as math-mode material: text in \\text{}, kernels as k$\\times$k."""
    return r"\text{" + escape(format_conv(line.conv, "x") if line.conv is not None else line.text) + "}"


def _tex_line(line) -> str:
    if isinstance(line, Text):
        return _tex_text(line)
    inner = r" \\ ".join(r"\text{" + escape(format_conv(c, "x")) + "}" for c in line.convs)
    left, right = (r"\left[", r"\right]") if line.residual else (r"\left(", r"\right)")
    options = "".join(r",\ \text{" + escape(o) + "}" for o in line.options)
    return f"{left}\\begin{{array}}{{l}} {inner} \\end{{array}}{right}\\times {line.repeat}{options}"


def tex_cell(lines) -> str:
    if lines is None:
        return MISSING["tex"]
    parts = [_tex_line(x) for x in lines]
    if len(parts) == 1:
        return f"${parts[0]}$"
    return r"$\begin{array}{c} " + r" \\ \noalign{\vskip 3pt} ".join(parts) + r" \end{array}$"


def _tex_caption(specs: list[Spec], ops=DEFAULT_OPS) -> TeX:
    names = ", ".join(f"{escape(s.title)} (\\texttt{{{escape(s.name)}}})" if s.title
                      else f"\\texttt{{{escape(s.name)}}}" for s in specs)
    sizes = [f"{s.input_size[0]}x{s.input_size[1]}" for s in specs]
    inputs = (f"input {sizes[0]}" if len(set(sizes)) == 1 else
              "inputs " + ", ".join(f"{s.title or s.name} {z}" for s, z in zip(specs, sizes)))
    return TeX(f"Architectures of {names}; {escape(inputs)}. " + escape(_conventions(specs, "x", ops)))


def _tex_line_extent(line) -> tuple[float, float]:
    if isinstance(line, Text):
        return text_width(line.text), LINE_PT
    width = max(text_width(format_conv(c, "x")) for c in line.convs) + 30 + \
        sum(text_width(", " + o) for o in line.options)
    return width, len(line.convs) * LINE_PT + 4


def _tex_cell_extent(lines) -> tuple[float, float]:
    if lines is None:
        return 10.0, LINE_PT
    extents = [_tex_line_extent(x) for x in lines]
    return max(w for w, _ in extents), sum(h for _, h in extents) + 4 * (len(extents) - 1)


def tex_extent(rows: list[str], columns: list[_Column], shared: bool) -> tuple[float, float]:
    """Estimated (width, height) in pt of the tabular, for latex.py's fit rule."""
    size_width = 50.0
    widths = [max(text_width(r) for r in rows + ["FLOPs (conv, fc, bn)"])]
    if shared:
        widths.append(size_width)
    heights = {row: LINE_PT for row in rows + ["head"]}
    for c in columns:
        if not shared:
            widths.append(size_width)
        cell_w = text_width(c.label) * (0.5 if not shared else 1.0)
        for row in rows + ["head"]:
            w, h = _tex_cell_extent(c.cells[row])
            cell_w = max(cell_w, w)
            heights[row] = max(heights[row], h)
        widths.append(max(cell_w, 70.0 if not shared else 0.0))
    height = sum(h + 4 for h in heights.values()) + (2 if shared else 3) * LINE_PT + 2 * LINE_PT + 20
    return 1.05 * tabular_width(widths), height  # math (brackets, \times) runs wider than text


def _tex_label(specs: list[Spec]) -> str:
    return "tab:arch-" + "-".join(re.sub(r"[^A-Za-z0-9]+", "-", s.name).strip("-") or "spec" for s in specs)


def _render_tex(specs: list[Spec], rows: list[str], columns: list[_Column], standalone: bool,
                ops=DEFAULT_OPS) -> str:
    shared = _shared_sizes(columns, rows)
    n = len(columns)
    if shared:
        out = [r"\begin{tabular}{l c " + " ".join("c" * n) + "}", r"\toprule",
               "stage & output size & " + " & ".join(escape(c.label) for c in columns) + r" \\"]
    else:
        out = [r"\begin{tabular}{l " + " ".join("cc" for _ in columns) + "}", r"\toprule",
               " & " + " & ".join(rf"\multicolumn{{2}}{{c}}{{{escape(c.label)}}}" for c in columns) + r" \\",
               "".join(rf"\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(n)),
               "stage & " + " & ".join("output size & block structure" for _ in columns) + r" \\"]
    out.append(r"\midrule")
    for row in rows + ["head"]:
        if row == "head":
            out.append(r"\midrule")
        cells = [escape(row)]
        if shared:
            size = next(c.sizes[row] for c in columns if c.sizes[row] is not None)
            cells += [_tex_size(size)] + [tex_cell(c.cells[row]) for c in columns]
        else:
            for c in columns:
                size = c.sizes[row]
                cells += [_tex_size(size) if size else MISSING["tex"], tex_cell(c.cells[row])]
        out.append(" & ".join(cells) + r" \\ \addlinespace")
    out.append(r"\midrule")
    for label, values in (("params", [f"{c.params:,}" for c in columns]),
                          (flops_label(ops), [f"{c.flops / 1e9:.2f}\\,G" for c in columns])):
        label = escape(label)
        if shared:
            out.append(f"{label} & & " + " & ".join(values) + r" \\")
        else:
            out.append(f"{label} & " + " & ".join(rf"\multicolumn{{2}}{{c}}{{{v}}}" for v in values) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    command = " ".join(" ".join(s.name.split()) for s in specs)
    fragment = table_float("\n".join(out), _tex_caption(specs, ops), _tex_label(specs), *tex_extent(rows, columns, shared),
                           comments=(f"Architecture table generated by: archspec table {command} --format tex",))
    return document(fragment) if standalone else fragment


# -- entry point --------------------------------------------------------------------------------

def render_arch_table(specs: list[Spec], fmt: str, standalone: bool = False, ops=DEFAULT_OPS) -> str:
    """The architecture table of ``specs`` side by side, as ``fmt`` ('md' or 'tex').

    ``standalone`` (tex only): a complete A4 document (latex.document); by default a ``table``
    fragment for ``\\input``, its comments naming the packages it needs. Markdown ignores it.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown table format '{fmt}' (hint: use one of: {', '.join(FORMATS)})")
    specs = list(specs)
    if not specs:
        raise UserError("no spec given (hint: name at least one spec, e.g. presnet50)")
    from archspec.report.compare import merge_stage_names

    rows = merge_stage_names(s.stage_names for s in specs)
    columns = _columns(specs, rows, ops)
    if fmt == "md":
        return _render_md(specs, rows, columns, ops)
    return _render_tex(specs, rows, columns, standalone, ops)
