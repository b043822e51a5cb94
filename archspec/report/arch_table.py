"""The architecture table (Table 1 of the LoCo supplement, He et al.'s Table 1) regenerated
from specs, the models side by side, as GitHub markdown or LaTeX (booktabs).

One row per stage name (the union of the specs' stage names, in order; a model without that
stage shows a dash), then the head, the parameter count and the conv+fc MACs per image.
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
from archspec.spec.notation import block_options, format_conv
from archspec.spec.schema import POOL_DOWNSAMPLES, Conv, Spec

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
        options = (("inverted",) if group.kind == "inverted" else ()) + tuple(block_options(group))
        if group.kind == "conv" and group.repeat == 1 and not options:
            lines.extend(Text(format_conv(c, "x"), conv=c) for c in group.convs)
        else:
            lines.append(Bracket(tuple(group.convs), group.repeat, residual=group.kind != "conv", options=options))
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


def _merged_stage_names(specs: list[Spec]) -> list[str]:
    """The union of stage names, each spec's order kept (a new name goes after its predecessor)."""
    merged: list[str] = []
    for spec in specs:
        pos = 0
        for name in spec.stage_names:
            if name in merged:
                pos = merged.index(name) + 1
            else:
                merged.insert(pos, name)
                pos += 1
    return merged


@dataclass
class _Column:
    spec: Spec
    label: str
    cells: dict  # row key -> list of lines, or None (stage missing)
    sizes: dict  # row key -> (h, w) or None
    params: int
    macs: int


def _columns(specs: list[Spec], rows: list[str]) -> list[_Column]:
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
                               macs=sum(c.macs["conv"] + c.macs["fc"] for c in counts.values())))
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


def caption_text(specs: list[Spec], times: str = "x") -> str:
    """The conventions, in words (the markdown caption; LaTeX writes the same with math)."""
    names = ", ".join(f"{md_escape(s.title)} ({md_escape(s.name)})" if s.title else md_escape(s.name)
                      for s in specs)
    return (f"Architectures of {names}; {_input_sizes(specs)}. Output sizes are height x width. "
            f"A bracket is one residual block (2 convs: basic, 3: bottleneck), each conv 'kernel, output "
            f"channels[, groups][, stride]' and followed by batch norm; ReLU follows every conv but a block's last "
            f"and the residual addition; the shortcut is a 1x1 conv + BN projection where channels or size change. "
            f"{times}N repeats a block, and a stride acts in the first block of its line only; a stage's first "
            f"block, when it differs, has its own line. 'bilinear to HxW': bilinear interpolation at the stage's "
            f"start. Params: all weights, batch norm and the fc bias included. MACs: multiply-accumulates of "
            f"conv and fc layers per image, forward pass (G = 10^9; FLOPs = 2 x MACs); batch norm, ReLU, "
            f"pooling, additions and interpolation not counted." + _option_notes(specs))


def _option_notes(specs: list[Spec]) -> str:
    """One sentence per option the specs use beyond ResNet's (none for ResNets)."""
    groups = [g for s in specs for st in s.stages for g in st.blocks]
    convs = [c for g in groups for c in g.convs]
    notes = []
    if any(g.kind == "conv" and (g.repeat != 1 or block_options(g)) for g in groups):  # as _stage_lines draws
        notes.append("Parentheses: plain conv-BN-activation layers, no shortcut.")
    if any(g.kind == "inverted" for g in groups):
        notes.append("'inverted': MobileNetV2's inverted residual (expansion 1x1, depthwise, linear 1x1 projection; "
                     "the input is added only where the block keeps its shape, with no activation after it).")
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


def _render_md(specs: list[Spec], rows: list[str], columns: list[_Column]) -> str:
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
                          ("MACs (conv+fc)", [f"{c.macs / 1e9:.2f} G" for c in columns])):
        cells = [label]
        if shared:
            cells += [""] + values
        else:
            for v in values:
                cells += ["", v]
        body.append(cells)
    lines = [f"{caption_text(specs, '×')}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines.extend("| " + " | ".join(cells) + " |" for cells in body)
    return "\n".join(lines) + "\n"


# -- LaTeX --------------------------------------------------------------------------------------

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}"}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX_SPECIAL))


def tex_escape(text: str) -> str:
    """Plain text for LaTeX's text mode: specials escaped, whitespace (newlines too) collapsed."""
    return _TEX_RE.sub(lambda m: _TEX_SPECIAL[m.group()], " ".join(str(text).split()))


def _tex_size(size) -> str:
    return f"${size[0]}\\times {size[1]}$"


def _tex_text(line: Text) -> str:
    """One line as math-mode material: text in \\text{}, kernels as k$\\times$k."""
    if line.conv is not None:
        return r"\text{" + format_conv(line.conv, r"$\times$") + "}"
    text = tex_escape(line.text)
    text = re.sub(r"(\d+)x(\d+)", r"\1$\\times$\2", text)
    return r"\text{" + text + "}"


def _tex_line(line) -> str:
    if isinstance(line, Text):
        return _tex_text(line)
    inner = r" \\ ".join(r"\text{" + format_conv(c, r"$\times$") + "}" for c in line.convs)
    left, right = (r"\left[", r"\right]") if line.residual else (r"\left(", r"\right)")
    options = "".join(r",\ \text{" + tex_escape(o) + "}" for o in line.options)
    return f"{left}\\begin{{array}}{{l}} {inner} \\end{{array}}{right}\\times {line.repeat}{options}"


def tex_cell(lines) -> str:
    if lines is None:
        return MISSING["tex"]
    parts = [_tex_line(x) for x in lines]
    if len(parts) == 1:
        return f"${parts[0]}$"
    return r"$\begin{array}{c} " + r" \\ \noalign{\vskip 3pt} ".join(parts) + r" \end{array}$"


def _tex_caption(specs: list[Spec]) -> str:
    names = ", ".join(f"{tex_escape(s.title)} (\\texttt{{{tex_escape(s.name)}}})" if s.title
                      else f"\\texttt{{{tex_escape(s.name)}}}" for s in specs)
    sizes = [f"{s.input_size[0]}$\\times${s.input_size[1]}" for s in specs]
    inputs = (f"input {sizes[0]}" if len(set(sizes)) == 1 else
              "inputs " + ", ".join(f"{tex_escape(s.title or s.name)} {z}" for s, z in zip(specs, sizes)))
    return (f"Architectures of {names}; {inputs}. Output sizes are height$\\times$width. A bracket is one "
            r"residual block (2 convs: basic, 3: bottleneck), each conv written `kernel, output channels[, groups]"
            r"[, stride]' and followed by batch norm; ReLU follows every conv but a block's last and the residual "
            r"addition; the shortcut is a "
            r"1$\times$1 conv + BN projection where channels or size change. $\times N$ repeats a block, and a "
            r"stride acts in the first block of its line only; a stage's first block, when it differs, has its "
            r"own line. `bilinear to $H\times W$': bilinear interpolation at the stage's start. Params: all "
            r"weights, batch norm and the fc bias included. MACs: multiply-accumulates of conv and fc layers per "
            r"image, forward pass (G${}=10^9$; FLOPs${}=2\times{}$MACs); batch norm, ReLU, pooling, additions and "
            r"interpolation not counted." + (" " if _option_notes(specs) else "") + re.sub(r"(\d+)x(\d+)|R x ", lambda m: f"{m.group(1)}$\\times${m.group(2)}"
                                                    if m.group(1) else r"R$\times$", tex_escape(_option_notes(specs))))


# Rough extent of the typeset table (\small, Computer Modern), to choose the standalone page.
_CHAR_PT, _LINE_PT, _COLSEP_PT, _MARGIN_PT = 4.7, 11.0, 12.0, 43.0  # margin: 1.5cm
_PAPERS = [(f"{name}paper", landscape, w, h) for name, (w, h) in
           (("a4", (595, 842)), ("a3", (842, 1191)), ("a2", (1191, 1684)), ("a1", (1684, 2384)),
            ("a0", (2384, 3370)))
           for landscape in (False, True)]


def _tex_line_extent(line) -> tuple[float, float]:
    if isinstance(line, Text):
        return len(line.text) * _CHAR_PT, _LINE_PT
    width = max(len(format_conv(c, "x")) for c in line.convs) * _CHAR_PT + 30 + \
        sum(len(o) + 2 for o in line.options) * _CHAR_PT
    return width, len(line.convs) * _LINE_PT + 4


def _tex_cell_extent(lines) -> tuple[float, float]:
    if lines is None:
        return 10.0, _LINE_PT
    extents = [_tex_line_extent(x) for x in lines]
    return max(w for w, _ in extents), sum(h for _, h in extents) + 4 * (len(extents) - 1)


def tex_extent(rows: list[str], columns: list[_Column], shared: bool) -> tuple[float, float]:
    """Estimated (width, height) in pt of the tabular: enough to pick a paper size."""
    size_width = 50.0
    widths = [max([len(r) * _CHAR_PT for r in rows + ["MACs (conv+fc)"]])]
    if shared:
        widths.append(size_width)
    heights = {row: _LINE_PT for row in rows + ["head"]}
    for c in columns:
        if not shared:
            widths.append(size_width)
        cell_w = len(c.label) * _CHAR_PT * (0.5 if not shared else 1.0)
        for row in rows + ["head"]:
            w, h = _tex_cell_extent(c.cells[row])
            cell_w = max(cell_w, w)
            heights[row] = max(heights[row], h)
        widths.append(max(cell_w, 70.0 if not shared else 0.0))
    width = sum(widths) + _COLSEP_PT * len(widths)
    height = sum(h + 4 for h in heights.values()) + (2 if shared else 3) * _LINE_PT + 2 * _LINE_PT + 20
    return width, height


def _tex_paper(rows: list[str], columns: list[_Column], shared: bool, caption_chars: int) -> str:
    """The smallest A-series page (portrait first) the table and its caption fit on."""
    width, height = tex_extent(rows, columns, shared)
    for paper, landscape, w, h in _PAPERS:
        if landscape:
            w, h = h, w
        text_w, text_h = w - 2 * _MARGIN_PT, h - 2 * _MARGIN_PT
        caption_h = (caption_chars * _CHAR_PT / text_w + 1) * _LINE_PT
        if width <= text_w and height + caption_h <= text_h:  # the estimates err on the large side
            return paper + (",landscape" if landscape else "")
    return "a0paper,landscape"


def _tex_label(specs: list[Spec]) -> str:
    return "tab:arch-" + "-".join(re.sub(r"[^A-Za-z0-9]+", "-", s.name).strip("-") or "spec" for s in specs)


def _render_tex(specs: list[Spec], rows: list[str], columns: list[_Column], standalone: bool) -> str:
    shared = _shared_sizes(columns, rows)
    out = []
    command = " ".join(" ".join(s.name.split()) for s in specs)
    out.append(f"% Architecture table generated by: archspec table {command} --format tex")
    if not standalone:
        out.append(r"% A fragment for \input: the preamble needs \usepackage{booktabs} and \usepackage{amsmath}.")
    out.append(r"\begin{table}[htbp]")
    out.append(r"\centering")
    out.append(r"\small")
    out.append(r"\caption{" + _tex_caption(specs) + "}")
    out.append(r"\label{" + _tex_label(specs) + "}")
    n = len(columns)
    if shared:
        out.append(r"\begin{tabular}{l c " + " ".join("c" * n) + "}")
        out.append(r"\toprule")
        out.append("stage & output size & " + " & ".join(tex_escape(c.label) for c in columns) + r" \\")
    else:
        out.append(r"\begin{tabular}{l " + " ".join("cc" for _ in columns) + "}")
        out.append(r"\toprule")
        out.append(" & " + " & ".join(rf"\multicolumn{{2}}{{c}}{{{tex_escape(c.label)}}}" for c in columns) + r" \\")
        out.append("".join(rf"\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(n)))
        out.append("stage & " + " & ".join("output size & block structure" for _ in columns) + r" \\")
    out.append(r"\midrule")
    for row in rows + ["head"]:
        if row == "head":
            out.append(r"\midrule")
        cells = [tex_escape(row)]
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
                          ("MACs (conv+fc)", [f"{c.macs / 1e9:.2f}\\,G" for c in columns])):
        if shared:
            out.append(f"{label} & & " + " & ".join(values) + r" \\")
        else:
            out.append(f"{label} & " + " & ".join(rf"\multicolumn{{2}}{{c}}{{{v}}}" for v in values) + r" \\")
    out.append(r"\bottomrule")
    out.append(r"\end{tabular}")
    out.append(r"\end{table}")
    if not standalone:
        return "\n".join(out) + "\n"
    paper = _tex_paper(rows, columns, shared, len(_tex_caption(specs)))
    preamble = ["\\documentclass{article}", f"\\usepackage[{paper},margin=1.5cm]{{geometry}}",
                "\\usepackage{booktabs}", "\\usepackage{amsmath}", "\\pagestyle{empty}", "\\begin{document}"]
    return "\n".join(out[:1] + preamble + out[1:] + ["\\end{document}"]) + "\n"


# -- entry point --------------------------------------------------------------------------------

def render_arch_table(specs: list[Spec], fmt: str, standalone: bool = False) -> str:
    """The architecture table of ``specs`` side by side, as ``fmt`` ('md' or 'tex').

    ``standalone`` (tex only) gives a complete compilable document; by default the LaTeX is a
    ``table`` fragment for ``\\input`` that needs booktabs and amsmath. Markdown ignores it.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown table format '{fmt}' (hint: use one of: {', '.join(FORMATS)})")
    specs = list(specs)
    if not specs:
        raise UserError("no spec given (hint: name at least one spec, e.g. presnet50)")
    rows = _merged_stage_names(specs)
    columns = _columns(specs, rows)
    if fmt == "md":
        return _render_md(specs, rows, columns)
    return _render_tex(specs, rows, columns, standalone)
