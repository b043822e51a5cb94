"""`archspec table`: the architecture table (the LoCo supplement's Table 1) from specs.

Markdown is parsed back and checked cell by cell, and against the seed's Table 1; LaTeX is
checked for structure strictly and compiled with pdflatex (skipped only outside CI when no
LaTeX engine is installed; .ci/run installs one).
"""
import re

import pytest

from archspec.errors import UserError
from archspec.report.arch_table import render_arch_table
from archspec.report.latex import escape as tex_escape
from archspec.spec import load_spec, loads
from archspec.spec.notation import parse_conv, parse_downsample_text

from .conftest import ROOT, compile_latex, run_cli as run, spec_text
from .test_latex import A4, pdf_pages

# A copy of ../shared/seed/table1.md (the LoCo supplement's Table 1), so that CI checks against it too.
SEED_TABLE1 = ROOT / "tests" / "data" / "seed_table1.md"
PRESNET_STAGES = ["conv1", "res2", "res3", "res4", "res5", "res6", "res7"]


@pytest.fixture(scope="module")
def pair():
    return [load_spec("presnet50"), load_spec("resnet50")]


@pytest.fixture(scope="module")
def md(pair):
    return render_arch_table(pair, "md")


@pytest.fixture(scope="module")
def tex(pair):
    return render_arch_table(pair, "tex")


# -- markdown, parsed back ----------------------------------------------------------------------

def split_row(line: str) -> list[str]:
    """Cells of a GitHub table row: split on unescaped '|', outer pipes dropped."""
    assert line.startswith("|") and line.endswith("|"), line
    cells = re.split(r"(?<!\\)\|", line[1:-1])
    return [c.strip() for c in cells]


def parse_md_table(text: str) -> tuple[list[str], list[list[str]]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    header, rule, body = split_row(rows[0]), split_row(rows[1]), [split_row(r) for r in rows[2:]]
    assert all(re.fullmatch(r"-{3,}", c) for c in rule) and len(rule) == len(header)
    for row in body:
        assert len(row) == len(header), row
    # Exactly one table, in one block of lines, preceded by a caption paragraph.
    lines = text.splitlines()
    first = lines.index(rows[0])
    assert lines[first:first + len(rows)] == rows and first >= 2 and lines[first - 1] == ""
    return header, body


PRESNET_CELLS = {
    "conv1": ("112x112", "7x7, 32, stride 2"),
    "res2": ("56x56", "3x3 max pool, stride 2<br>[3x3, 56 · 3x3, 56] ×3"),
    "res3": ("36x36", "bilinear to 36x36<br>[3x3, 96 · 3x3, 96] ×3"),
    "res4": ("24x24", "bilinear to 24x24<br>[1x1, 144 · 3x3, 144 · 1x1, 576] ×3"),
    "res5": ("16x16", "bilinear to 16x16<br>[1x1, 256, 2 grps · 3x3, 256, 2 grps · 1x1, 1024] ×1"
                      "<br>[1x1, 256, 2 grps · 3x3, 256, 2 grps · 1x1, 1024, 2 grps] ×2"),
    "res6": ("12x12", "bilinear to 12x12<br>[1x1, 512, 16 grps · 3x3, 512, 16 grps · 1x1, 2048] ×1"
                      "<br>[1x1, 512, 16 grps · 3x3, 512, 16 grps · 1x1, 2048, 16 grps] ×2"),
    "res7": ("8x8", "bilinear to 8x8<br>[1x1, 1024, 128 grps · 3x3, 1024, 128 grps · 1x1, 4096] ×1"
                    "<br>[1x1, 1024, 128 grps · 3x3, 1024, 128 grps · 1x1, 4096, 128 grps] ×2"),
    "head": ("1x1", "global average pool, 4096-d<br>1000-d fc"),
    "params": ("", "25,029,592"),
    "FLOPs (conv, fc)": ("", "7.51 G"),
}
RESNET_CELLS = {
    "conv1": ("112x112", "7x7, 64, stride 2"),
    "res2": ("56x56", "3x3 max pool, stride 2<br>[1x1, 64 · 3x3, 64 · 1x1, 256] ×3"),
    "res3": ("28x28", "[1x1, 128 · 3x3, 128, stride 2 · 1x1, 512] ×4"),
    "res4": ("14x14", "[1x1, 256 · 3x3, 256, stride 2 · 1x1, 1024] ×6"),
    "res5": ("7x7", "[1x1, 512 · 3x3, 512, stride 2 · 1x1, 2048] ×3"),
    "res6": ("-", "-"),
    "res7": ("-", "-"),
    "head": ("1x1", "global average pool, 2048-d<br>1000-d fc"),
    "params": ("", "25,557,032"),
    "FLOPs (conv, fc)": ("", "8.18 G"),
}


def test_md_presnet50_resnet50_cells(md):
    header, body = parse_md_table(md)
    assert header == ["stage", "Progressive ResNet-50 output size", "Progressive ResNet-50",
                      "ResNet-50 output size", "ResNet-50"]
    assert [r[0] for r in body] == PRESNET_STAGES + ["head", "params", "FLOPs (conv, fc)"]
    for row in body:
        assert (row[1], row[2]) == PRESNET_CELLS[row[0]], row[0]
        assert (row[3], row[4]) == RESNET_CELLS[row[0]], row[0]


def test_md_caption_states_conventions(md):
    caption = md.split("\n\n")[0]
    assert "\n" not in caption.strip()
    for phrase in ["Progressive ResNet-50 (presnet50)", "ResNet-50 (resnet50)", "input 224x224",
                   "A bracket is one residual block", "Conventions: FLOPs = 2 x MACs of conv, fc, forward, per image.",
                   "bilinear"]:
        assert phrase in caption


def test_md_shared_output_size_column_when_models_agree():
    header, body = parse_md_table(render_arch_table([load_spec("resnet18"), load_spec("resnet50")], "md"))
    assert header == ["stage", "output size", "ResNet-18", "ResNet-50"]
    rows = {r[0]: r[1:] for r in body}
    assert rows["res3"] == ["28x28", "[3x3, 128, stride 2 · 3x3, 128] ×2",
                            "[1x1, 128 · 3x3, 128, stride 2 · 1x1, 512] ×4"]
    assert rows["head"][0] == "1x1" and rows["params"] == ["", "11,689,512", "25,557,032"]


# -- markdown against the seed's Table 1 --------------------------------------------------------

def _split_top(text: str, seps: tuple[str, ...]) -> list[str]:
    """Split on separators outside brackets."""
    parts, depth, cur, i = [], 0, "", 0
    while i < len(text):
        if depth == 0 and any(text.startswith(s, i) for s in seps):
            sep = next(s for s in seps if text.startswith(s, i))
            parts.append(cur)
            cur, i = "", i + len(sep)
            continue
        depth += {"[": 1, "]": -1}.get(text[i], 0)
        cur += text[i]
        i += 1
    return [p.strip() for p in parts + [cur] if p.strip()]


def _item(text: str, conv_sep: str):
    """One item of a cell: ('pool', Downsample) | ('bilinear', 'HxW') | ('block', convs, repeat) | ('conv', conv)."""
    text = re.sub(r"^(basic block|bottleneck)\s+", "", text.strip())
    if "max pool" in text:
        return ("pool", parse_downsample_text(text))
    if text.startswith("bilinear to "):
        return ("bilinear", text[len("bilinear to "):])
    m = re.fullmatch(r"\[(.*)\]\s*[x×](\d+)", text)
    if m:
        return ("block", tuple(parse_conv(c) for c in m.group(1).split(conv_sep)), int(m.group(2)))
    return ("conv", parse_conv(text))


def seed_items(cell: str) -> list:
    return [_item(p, ";") for p in _split_top(cell, ("; ", ", then "))]


def md_items(cell: str) -> list:
    return [_item(p, " · ") for p in cell.split("<br>")]


def _unstrided(item):
    """Seed tables leave strides in residual blocks implicit (ResNet's v1.5 stride in the 3x3)."""
    if item[0] == "block":
        return ("block", tuple((c.kernel, c.channels, c.groups) for c in item[1]), item[2])
    return item


def read_seed() -> dict[str, dict[str, tuple[str, str]]]:
    tables, current = {}, None
    for line in SEED_TABLE1.read_text().splitlines():
        if line.startswith("## "):
            current = tables.setdefault("presnet50" if "PResNet" in line else "resnet50", {})
        elif line.startswith("|") and current is not None and not line.startswith("|---"):
            stage, size, structure = split_row(line)
            if stage != "stage":
                current[stage] = (size, structure)
    return tables


def test_md_matches_seed_table1(md):
    seed = read_seed()
    header, body = parse_md_table(md)
    rows = {r[0]: r for r in body}
    for name, (size_col, cell_col) in (("presnet50", (1, 2)), ("resnet50", (3, 4))):
        assert list(seed[name]) == [s for s in PRESNET_STAGES if rows[s][cell_col] != "-"] + ["head"]
        for stage, (size, structure) in seed[name].items():
            assert rows[stage][size_col] == size, (name, stage)
            if stage == "head":
                assert "global average pool" in rows[stage][cell_col] and "1000-d fc" in rows[stage][cell_col]
                want = "4096-d" if name == "presnet50" else "2048-d"
                assert want in rows[stage][cell_col]
                continue
            mine = md_items(rows[stage][cell_col])
            # The seed states the bilinear downsampling (res3 on) in a footnote; the table states it per stage.
            bilinear = [x for x in mine if x[0] == "bilinear"]
            if name == "presnet50" and stage not in ("conv1", "res2"):
                assert bilinear == [("bilinear", size)], stage
            else:
                assert bilinear == [], stage
            mine = [x for x in mine if x[0] != "bilinear"]
            assert [_unstrided(x) for x in mine] == [_unstrided(x) for x in seed_items(structure)], (name, stage)
    # The strides the seed leaves implicit: ResNet-50 v1.5 strides the 3x3 of res3-res5's first block.
    for stage in ("res3", "res4", "res5"):
        (block,) = md_items(rows[stage][4])
        assert [c.stride for c in block[1]] == [1, 2, 1]


def test_md_rows_follow_union_of_stage_names():
    extra = loads("name: odd_net\nstages:\n"
                  "  - {name: conv1, output_size: 112, blocks: ['conv [7x7, 16, stride 2]']}\n"
                  "  - {name: mid, output_size: 112, blocks: ['basic [3x3, 16; 3x3, 16] x1']}\n"
                  "  - {name: res2, output_size: 56, downsample: maxpool, blocks: ['basic [3x3, 16; 3x3, 16] x2']}\n"
                  "head: {fc: null}\n")
    header, body = parse_md_table(render_arch_table([load_spec("resnet18"), extra], "md"))
    assert [r[0] for r in body][:7] == ["conv1", "mid", "res2", "res3", "res4", "res5", "head"]
    rows = {r[0]: r for r in body}
    # Where both have a stage they agree on its size: one output-size column.
    assert header == ["stage", "output size", "ResNet-18", "odd\\_net"]  # the name, escaped, when no title
    assert rows["mid"] == ["mid", "112x112", "-", "[3x3, 16 · 3x3, 16] ×1"]
    assert rows["res5"][2:] == ["[3x3, 512, stride 2 · 3x3, 512] ×2", "-"]
    assert rows["head"][3] == "global average pool, 16-d<br>no fc (the representation is the output)"
    tex = render_arch_table([load_spec("resnet18"), extra], "tex")
    check_tex_structure(tex)
    assert r"mid & $112\times 112$ & -- & $\left[" in tex


# -- LaTeX structure ----------------------------------------------------------------------------

def _unescaped(tex: str, char: str) -> int:
    return len(re.findall(r"(?<!\\)" + re.escape(char), tex))


def check_tex_structure(tex: str) -> None:
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    # Braces balance and never go negative (escaped \{ \} excluded).
    depth = 0
    for ch in re.sub(r"\\[{}]", "", body.replace("\\\\", "")):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    # Environments nest properly.
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+\*?)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, env
    assert stack == []
    assert body.count(r"\left") == body.count(r"\right") > 0
    for line in body.splitlines():
        assert _unescaped(line, "$") % 2 == 0, line  # math opened and closed on each line
    # booktabs: one top rule first, one bottom rule last, mid rules between.
    rules = re.findall(r"\\(toprule|midrule|bottomrule|hline)", body)
    assert rules[0] == "toprule" and rules[-1] == "bottomrule" and "hline" not in rules
    assert rules.count("toprule") == rules.count("bottomrule") == 1 and "midrule" in rules
    # Every row of the tabular has as many cells as the column spec says.
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", body).group(1)
    ncols = len(spec.replace(" ", ""))
    inner = body[body.index(r"\toprule"):body.index(r"\bottomrule")]
    for line in inner.splitlines():
        if not line.endswith((r"\\", r"\\ \addlinespace")):
            continue
        cells = _unescaped(line, "&") + 1
        spans = [int(n) for n in re.findall(r"\\multicolumn\{(\d+)\}", line)]
        assert cells - len(spans) + sum(spans) == ncols, line


def test_tex_fragment_structure(tex):
    check_tex_structure(tex)
    head = tex.splitlines()[:2]
    assert all(line.startswith("%") for line in head)
    assert r"\usepackage{booktabs}" in head[1] and r"\usepackage{amsmath}" in head[1] and r"\input" in head[1]
    assert r"\documentclass" not in tex and r"\begin{document}" not in tex
    assert tex.count(r"\begin{table}") == 1 and r"\caption{" in tex and r"\label{tab:arch-presnet50-resnet50}" in tex
    caption = re.search(r"\\caption\{(.*)\}\n", tex).group(1)
    assert r"Conventions: FLOPs = 2 $\times$ MACs of conv, fc, forward, per image." in caption
    assert r"input 224$\times$224" in caption and r"G = $10^{9}$;" in caption and r"`kernel, output channels" in caption
    assert r"\multicolumn{2}{c}{Progressive ResNet-50}" in tex and r"\cmidrule(lr){2-3}\cmidrule(lr){4-5}" in tex


def test_tex_rows_and_notation(tex):
    rows = {line.split(" & ")[0]: line for line in tex.splitlines() if " & " in line}
    for stage in PRESNET_STAGES + ["head", "params", "FLOPs (conv, fc)"]:
        assert stage in rows, stage
    t = r"$\times$"
    assert rows["conv1"] == (rf"conv1 & $112\times 112$ & $\text{{7{t}7, 32, stride 2}}$ & $112\times 112$ & "
                             rf"$\text{{7{t}7, 64, stride 2}}$ \\ \addlinespace")
    assert rf"\text{{3{t}3 max pool, stride 2}}" in rows["res2"]
    assert (rf"\left[\begin{{array}}{{l}} \text{{3{t}3, 56}} \\ \text{{3{t}3, 56}} \end{{array}}\right]\times 3"
            in rows["res2"])
    assert rf"\text{{bilinear to 36{t}36}}" in rows["res3"]
    res7_first = (rf"\left[\begin{{array}}{{l}} \text{{1{t}1, 1024, 128 grps}} \\ \text{{3{t}3, 1024, 128 grps}} \\ "
                  rf"\text{{1{t}1, 4096}} \end{{array}}\right]\times 1")
    res7_rest = (rf"\left[\begin{{array}}{{l}} \text{{1{t}1, 1024, 128 grps}} \\ \text{{3{t}3, 1024, 128 grps}} \\ "
                 rf"\text{{1{t}1, 4096, 128 grps}} \end{{array}}\right]\times 2")
    assert rows["res7"].index(res7_first) < rows["res7"].index(res7_rest)  # the differing first block first
    assert rows["res7"].endswith(r"& -- & -- \\ \addlinespace")  # ResNet-50 has no res7
    assert rf"\text{{3{t}3, 128, stride 2}}" in rows["res3"] and r"\right]\times 4" in rows["res3"]
    assert r"\text{global average pool, 4096-d} \\ \noalign{\vskip 3pt} \text{1000-d fc}" in rows["head"]
    assert rows["params"] == r"params & \multicolumn{2}{c}{25,029,592} & \multicolumn{2}{c}{25,557,032} \\"
    assert rows["FLOPs (conv, fc)"] == r"FLOPs (conv, fc) & \multicolumn{2}{c}{7.51\,G} & \multicolumn{2}{c}{8.18\,G} \\"


def test_tex_standalone_document(pair):
    doc = render_arch_table(pair, "tex", standalone=True)
    check_tex_structure(doc)
    assert doc.splitlines()[0].startswith("% Architecture table generated by: archspec table presnet50 resnet50")
    assert doc.splitlines()[1] == r"\documentclass{article}"
    assert r"\usepackage[a4paper,margin=1.5cm]{geometry}" in doc  # always A4 (latex.fit: landscape, \resizebox)
    for pkg in ("booktabs", "amsmath"):
        assert rf"\usepackage{{{pkg}}}" in doc
    assert doc.index(r"\begin{document}") < doc.index(r"\begin{table}") < doc.index(r"\end{document}")
    assert doc.rstrip().endswith(r"\end{document}")


WEIRD_TITLE = r"A & B_50 % #1 $x$ ~ ^ \ {z} | <b>"


def weird_spec():
    text = spec_text("resnet18")
    text = re.sub(r"(?m)^name: .*$", "name: my_net_v2", text)
    text = re.sub(r"(?m)^title: .*$", "title: '" + WEIRD_TITLE.replace("'", "''") + "'", text)
    return loads(text)


def test_tex_escapes_names_and_titles():
    spec = weird_spec()
    assert spec.title == WEIRD_TITLE
    tex = render_arch_table([spec, load_spec("resnet50")], "tex", standalone=True)
    check_tex_structure(tex)
    escaped = (r"A \& B\_50 \% \#1 \$x\$ \textasciitilde{} \textasciicircum{} \textbackslash{} \{z\} "
               r"\textbar{} \textless{}b\textgreater{}")
    assert tex_escape(WEIRD_TITLE) == escaped
    assert f"stage & output size & {escaped} & ResNet-50" in tex
    assert r"(\texttt{my\_net\_v2})" in tex and r"\label{tab:arch-my-net-v2-resnet50}" in tex
    assert "my_net_v2" not in tex.replace("% Architecture table generated by: archspec table my_net_v2", "")


def test_md_escapes_names_and_titles():
    md = render_arch_table([weird_spec()], "md")
    header, _ = parse_md_table(md)
    assert header[2] == r"A & B\_50 % #1 \$x\$ \~ ^ \\ {z} \| &lt;b>"
    assert r"(my\_net\_v2)" in md.split("\n\n")[0]


# -- LaTeX compiled -----------------------------------------------------------------------------

@pytest.mark.parametrize("names", [["presnet50", "resnet50"], ["weird", "resnet18", "resnet34"],
                                   ["resnet18", "presnet50", "resnet50", "resnet101", "resnet152"]])
def test_tex_standalone_compiles_with_pdflatex(tmp_path, names):
    specs = [weird_spec() if n == "weird" else load_spec(n) for n in names]
    rc, log = compile_latex(tmp_path, "table", render_arch_table(specs, "tex", standalone=True))
    assert rc == 0, log[-3000:]
    assert (tmp_path / "table.pdf").stat().st_size > 1000
    assert {size for size, _ in pdf_pages(tmp_path / "table.pdf")} == {A4}  # landscape: A4 pages rotated
    assert "Overfull \\hbox" not in log and "Float too large" not in log, log[-3000:]


def test_tex_fragment_compiles_when_input(tmp_path, tex):
    (tmp_path / "table1.tex").write_text(tex, encoding="utf-8")
    rc, log = compile_latex(tmp_path, "paper", "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{amsmath}\n"
                                               "\\begin{document}\nSee Table~\\ref{tab:arch-presnet50-resnet50}.\n"
                                               "\\input{table1}\n\\end{document}\n")
    assert rc == 0, log[-3000:]


# -- the command --------------------------------------------------------------------------------

def test_cli_md_default_and_output_file(tmp_path, md):
    result = run("table", "presnet50", "resnet50")
    assert result.exit_code == 0, result.output
    assert result.output == md
    out = tmp_path / "t.tex"
    result = run("table", "presnet50", "resnet50", "--format", "tex", "--standalone", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text() == render_arch_table([load_spec("presnet50"), load_spec("resnet50")], "tex", True)


@pytest.mark.parametrize("args, message", [
    (["table", "presnet5"], "error: unknown spec 'presnet5' (hint: did you mean 'presnet50'?)"),
    (["table", "presnet50", "nope/missing.yaml"], "error: no such spec file: nope/missing.yaml"),
    (["table", "presnet50", "--format", "html"], "error: Invalid value for '--format'"),
    (["table"], "error: Missing argument"),
    (["table", "presnet50", "--standalone"], "error: --standalone applies to --format tex only"),
])
def test_cli_bad_input_one_line_exit_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert result.output.strip().startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_render_rejects_bad_format_and_no_specs(pair):
    with pytest.raises(UserError, match="unknown table format 'html'"):
        render_arch_table(pair, "html")
    with pytest.raises(UserError, match="no spec given"):
        render_arch_table([], "md")


def test_docs_show_the_command_output(md):
    docs = (ROOT / "docs" / "spec-format.md").read_text()
    marker = "`archspec table presnet50 resnet50` prints:\n\n"
    assert "## Regenerating the architecture table" in docs and marker in docs
    pasted = docs.split(marker, 1)[1].split("\n## ", 1)[0]
    assert pasted.strip() == md.strip(), "docs/spec-format.md: paste `archspec table presnet50 resnet50` again"
