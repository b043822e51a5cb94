"""archspec/report/latex.py: escaping, the fit rule, fragments and documents; every LaTeX writer
compiled with pdflatex, its pages checked to be A4 and its tables to fit the text width.

pdflatex runs skip outside CI when it is missing (tests/conftest.py: pdflatex()); the structure
tests always run.
"""
import re
import subprocess
import sys
import zlib

import pandas as pd
import pytest

from archspec.report import arch_table, balance, compare, latex, profile_tables
from archspec.report.latex import TeX, booktabs_table, document, escape, fit, required_packages
from archspec.spec import load_spec

from .conftest import compile_latex, run_cli

A4 = (595, 842)  # pt, portrait; a landscape page is this page rotated (/Rotate 90) or 842 x 595


# -- escape -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("input 224x224", r"input 224$\times$224"),
    ("32x112x112", r"32$\times$112$\times$112"),
    ("3x3 max pool, stride 2", r"3$\times$3 max pool, stride 2"),
    ("FLOPs = 2 x MACs", r"FLOPs = 2 $\times$ MACs"),
    ("(2 views x batch 256)", r"(2 views $\times$ batch 256)"),
    ("saving 3.76x", r"saving 3.76$\times$"),
    ("op x3 (res2)", r"op $\times$3 (res2)"),
    ("×N repeats, xN too", r"$\times$N repeats, $\times$N too"),
    ("bilinear to HxW", r"bilinear to H$\times$W"),
    ("'saved' = the bytes", r"`saved' = the bytes"),
    ("a block's last ('kernel, channels')", r"a block's last (`kernel, channels')"),
    ('"x" and "y z"', "``x'' and ``y z''"),
    ("MiB (2^20 bytes)", r"MiB ($2^{20}$ bytes)"),
    ("G = 10^9.", r"G = $10^{9}$."),
    ("eps 10^-3", r"eps $10^{-3}$"),
    ("a^b", r"a\textasciicircum{}b"),
    ("50% of res_2 & #1 ~ \\ {z} $5", r"50\% of res\_2 \& \#1 \textasciitilde{} \textbackslash{} \{z\} \$5"),
    ("a|b <c>", r"a\textbar{}b \textless{}c\textgreater{}"),
    ("--standalone", "-{}-standalone"),
    ("a\n\nb\tc", "a b c"),  # a blank line would end the caption's paragraph (an error)
])
def test_escape_renders_properly(text, want):
    assert escape(text) == want


@pytest.mark.parametrize("text", ["max pool", "resnext50_32x4d", "x", "box x", "$x$", "xray", "x86y"])
def test_escape_leaves_x_in_words_and_names(text):
    assert r"\times" not in escape(text)


@pytest.mark.parametrize("text, want", [
    ("×", r"$\times$"), ("a · b", r"a $\cdot$ b"), ("≤ 5", r"$\leq$ 5"), ("−3", "$-$3"), ("a → b", r"a $\rightarrow$ b"),
    ("α = 0.5", r"$\alpha$ = 0.5"), ("Ω", r"$\Omega$"), ("café", "café"), ("– —", "-- ---"), ("“q”", "``q''"),
    ("Þ", "Th"), ("😀", "?"), ("2^20×3", r"$2^{20} \times$3"), ("≤−", r"$\leq -$"),
    ("²³", "${}^{2} {}^{3}$"), ("ά ǎ", r"$\alpha$ a"), ("ﬁ", "fi"),
])
def test_escape_unicode_becomes_commands_pdflatex_knows(text, want):
    assert escape(text) == want


def test_escape_once_no_double_escaping():
    assert escape("a_b") == r"a\_b" and escape("\\%") == r"\textbackslash{}\%"
    for text in ["a_b % 224x224", "'q' 2^20", r"\textbf{x}", "×N"]:
        once = escape(text)
        assert isinstance(once, TeX) and escape(once) == once  # TeX passes through
        assert "$$" not in once
    assert escape(TeX(r"$\alpha$ \& b")) == r"$\alpha$ \& b"


@pytest.mark.parametrize("text", ["conv1", "res2 res3", "Progressive ResNet-50", "params", "fwd GFLOPs",
                                  "25,029,592", "0.12", "(res4, res5)", "local stage", ""])
def test_escape_leaves_plain_text_unchanged(text):
    assert escape(text) == text


# -- the fit rule -------------------------------------------------------------------------------

def frame(columns: int, width: int = 6, rows: int = 5) -> pd.DataFrame:
    return pd.DataFrame([[f"r{i}"] + ["1" * width] * (columns - 1) for i in range(rows)],
                        columns=["stage"] + [f"c{j}" for j in range(1, columns)])


def test_fit_rule():
    portrait_w, portrait_h = latex.text_area(False)
    landscape_w, _ = latex.text_area(True)
    assert round(portrait_w) == 510 and round(landscape_w) == 757 and round(portrait_h) == 757
    assert fit(300, 100) == latex.Fit(landscape=False, width=None)
    assert fit(600, 100) == latex.Fit(landscape=True, width=None)
    assert fit(1500, 100) == latex.Fit(landscape=True, width=1.0)
    tall = fit(300, 2000)  # too tall for either page: portrait, shrunk to fit the height
    assert not tall.landscape and 0.1 < tall.width < 0.6


def test_narrow_table_is_set_as_it_is():
    tex = booktabs_table(frame(5), "A narrow table.", "tab:narrow")
    assert r"\resizebox" not in tex and "landscape" not in tex
    assert tex.splitlines()[0] == latex.NEEDS + r"\usepackage{booktabs}."


def test_wide_table_goes_landscape_wider_is_resized():
    medium = booktabs_table(frame(14), "Medium.", "tab:medium")
    assert r"\begin{landscape}" in medium and r"\resizebox" not in medium
    wide = booktabs_table(frame(40), "Wide.", "tab:wide")
    assert r"\begin{landscape}" in wide and r"\resizebox{\linewidth}{!}{%" in wide
    assert wide.splitlines()[0] == latex.NEEDS + r"\usepackage{booktabs}, \usepackage{graphicx}, \usepackage{pdflscape}."


def test_booktabs_table_escapes_cells_caption_and_label():
    tex = booktabs_table(pd.DataFrame({"stage": ["res_2", "total"], "out %": ["32x56x56", "1.5x"]}),
                         "Memory in MiB (2^20 bytes); 'saved'.", "tab:my net#1")
    assert r"\caption{Memory in MiB ($2^{20}$ bytes); `saved'.}" in tex and r"\label{tab:my-net-1}" in tex
    assert r"stage & out \% \\" in tex and r"res\_2 & 32$\times$56$\times$56 \\" in tex
    assert tex.index(r"\midrule", tex.index("res")) < tex.index("total")  # a rule above the total


def test_required_packages_and_document():
    assert required_packages(r"\toprule \text{a} \resizebox{1pt}{!}{x} \begin{landscape}") == [
        r"\usepackage{booktabs}", r"\usepackage{amsmath}", r"\usepackage{graphicx}", r"\usepackage{pdflscape}"]
    assert required_packages("% \\toprule in a comment\nplain") == []
    narrow, wide = booktabs_table(frame(3), "N.", "tab:n"), booktabs_table(frame(40), "W.", "tab:w")
    doc = document(["% made by a test", narrow, wide])
    lines = doc.splitlines()
    assert lines[:3] == ["% made by a test", r"\documentclass{article}", latex.GEOMETRY]
    for pkg in ("booktabs", "graphicx", "pdflscape"):
        assert rf"\usepackage{{{pkg}}}" in doc
    assert latex.NEEDS not in doc and r"\usepackage{amsmath}" not in doc  # only what the fragments need
    assert doc.index(r"\begin{document}") < doc.index(r"\label{tab:n}") < doc.index(r"\label{tab:w}")
    assert lines[-1] == r"\end{document}" and document(narrow + "\n" + wide) == document([narrow, wide])


# -- compiled: pages are A4, tables fit ---------------------------------------------------------

def _pdf_text(data: bytes) -> bytes:
    """The PDF with its compressed streams (object streams hold the page dictionaries) inflated."""
    chunks = [data]
    for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
        try:
            chunks.append(zlib.decompress(m.group(1)))
        except zlib.error:
            pass
    return b"\n".join(chunks)


def _dict_around(text: bytes, pos: int) -> bytes:
    """The << ... >> dictionary that contains ``pos``."""
    depth, start = 0, pos
    while start > 0:
        start -= 1
        if text.startswith(b">>", start):
            depth += 1
        elif text.startswith(b"<<", start):
            if depth == 0:
                break
            depth -= 1
    end, depth = pos, 0
    while end < len(text):
        if text.startswith(b"<<", end):
            depth += 1
        elif text.startswith(b">>", end):
            if depth == 0:
                return text[start:end + 2]
            depth -= 1
        end += 1
    return text[start:]


def pdf_pages(path) -> list[tuple[tuple[int, int], int]]:
    """Per page: ((width, height) in pt, rounded, of its MediaBox, its /Rotate)."""
    text = _pdf_text(path.read_bytes())
    pages = []
    for m in re.finditer(rb"/Type\s*/Page(?![a-zA-Z])", text):
        page = _dict_around(text, m.start())
        box = re.search(rb"/MediaBox\s*\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s*\]", page)
        rotate = re.search(rb"/Rotate\s+(-?\d+)", page)
        x0, y0, x1, y1 = (float(v) for v in box.groups())
        pages.append(((round(x1 - x0), round(y1 - y0)), int(rotate.group(1)) % 360 if rotate else 0))
    return pages


def overfull(log: str) -> list[float]:
    return [float(w) for w in re.findall(r"Overfull \\hbox \((\d+(?:\.\d+)?)pt too wide\)", log)]


def check_compiles_on_a4(tmp_path, name: str, tex: str) -> list[tuple[tuple[int, int], int]]:
    """Compile ``tex``; every page A4 (portrait, or landscape as a rotated A4 or 842 x 595), no line
    wider than the text by more than 1pt, no float too large for its page. Returns the pages."""
    rc, log = compile_latex(tmp_path, name, tex)
    assert rc == 0, log[-3000:]
    pages = pdf_pages(tmp_path / f"{name}.pdf")
    assert pages, "no page in the PDF"
    for size, rotate in pages:
        assert (size, rotate) in ((A4, 0), (A4, 90), (A4[::-1], 0)), (size, rotate)
    assert all(w <= 1.0 for w in overfull(log)), [line for line in log.splitlines() if "Overfull" in line]
    assert "Float too large" not in log, log[-3000:]
    landscape = sum(1 for size, rotate in pages if rotate == 90 or size == A4[::-1])
    assert landscape >= tex.count(r"\begin{landscape}")
    return pages


@pytest.fixture(scope="module")
def docs():
    from archspec.profiling.profiler import profile

    return {name: profile(load_spec(name), batch=2).to_dict() for name in ("resnet18", "presnet50", "resnet50")}


def fragments(docs) -> dict[str, str]:
    """Every LaTeX writer's fragment on realistic documents, the renderers called directly."""
    return {
        "profile-resnet18": profile_tables.render(docs["resnet18"], "tex"),
        "profile-presnet50": profile_tables.render(docs["presnet50"], "tex", "block_outputs"),
        "compare-2": compare.render(compare.compare_docs([docs["presnet50"], docs["resnet50"]]), "tex"),
        "compare-3": compare.render(compare.compare_docs(list(docs.values())), "tex"),
        "balance": balance.render(balance.balance_from_profile(docs["presnet50"]), "tex"),
        "arch-2": arch_table.render_arch_table([load_spec("presnet50"), load_spec("resnet50")], "tex"),
        "arch-5": arch_table.render_arch_table([load_spec(n) for n in ("resnet18", "presnet50", "resnet50",
                                                                         "resnet101", "resnet152")], "tex"),
    }


def test_every_fragment_compiles_on_a4_and_fits(tmp_path, docs):
    frags = fragments(docs)
    assert r"\resizebox" in frags["compare-3"] and r"\resizebox" in frags["arch-5"]  # the fit rule at work
    assert r"\begin{landscape}" in frags["compare-2"] and r"\resizebox" not in frags["compare-2"]
    assert "landscape" not in frags["balance"] + frags["arch-2"]
    for name, tex in frags.items():
        folder = tmp_path / name
        folder.mkdir()
        check_compiles_on_a4(folder, name, document(tex))
    pages = check_compiles_on_a4(tmp_path, "all", document(list(frags.values())))
    assert len(pages) >= len(frags)


def test_fragment_compiles_with_the_packages_its_comment_names(tmp_path, docs):
    for name, tex in fragments(docs).items():
        needs = next(line for line in tex.splitlines() if line.startswith(latex.NEEDS))
        preamble = re.findall(r"\\usepackage(?:\[[^]]*\])?\{[^}]+\}", needs)
        (tmp_path / f"{name}.tex").write_text(tex, encoding="utf-8")
        rc, log = compile_latex(tmp_path, f"paper-{name}", "\\documentclass{article}\n" + "\n".join(preamble)
                                + f"\n\\begin{{document}}\n\\input{{{name}}}\n\\end{{document}}\n")
        assert rc == 0, (name, log[-3000:])


def test_the_check_catches_a_table_that_does_not_fit(tmp_path):
    wide = frame(40)
    tabular = booktabs_table(wide, "Too wide.", "tab:w")
    unfitted = tabular.replace(r"\begin{landscape}", "").replace(r"\end{landscape}", "")
    unfitted = re.sub(r"\\resizebox\{\\linewidth\}\{!\}\{%\n(.*?)%\n\}", r"\1", unfitted, flags=re.S)
    assert r"\resizebox" not in unfitted
    rc, log = compile_latex(tmp_path, "bad", document(unfitted))
    assert rc == 0 and max(overfull(log)) > 100


def test_every_character_escape_writes_compiles(tmp_path):
    """Each printable ASCII character, each one escape maps and Latin-1 + Latin Extended-A (spaced out:
    a run of symbols without a space has no line break)."""
    printable = "".join(chr(c) for c in range(0x20, 0x7F))
    specials = "".join(latex._MATH) + "".join(latex._TEXT) + "".join(chr(c) for c in range(0xA0, 0x180))
    text = " ".join(printable + specials) + " 224x224 2 x MACs 3.76x x3 'saved' \"q\" 2^20 10^9 ≤−→ 😀 Ελλάδα"
    tex = booktabs_table(pd.DataFrame({"a": [text[:60]], "b": ["1"]}), text, "tab:chars")
    check_compiles_on_a4(tmp_path, "chars", document(tex))


# -- every command's --standalone output, through the CLI ---------------------------------------

def has_standalone(*command: str) -> bool:
    result = run_cli(*command, "--help")
    return result.exit_code == 0 and "--standalone" in result.output


COMMANDS = {
    "profile": ["profile", "resnet18", "--format", "tex", "--standalone"],
    "profile-paper": ["profile", "presnet50", "--paper", "--format", "tex", "--standalone"],
    "compare": ["compare", "presnet50", "resnet50", "--format", "tex", "--standalone"],
    "balance": ["balance", "presnet50", "--format", "tex", "--standalone"],
    "table": ["table", "presnet50", "resnet50", "--format", "tex", "--standalone"],
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.skipif(
    not has_standalone(args[0]), reason=f"archspec {args[0]} has no --standalone yet")) for name, args in COMMANDS.items()])
def test_cli_standalone_compiles_on_a4(tmp_path, name):
    args = COMMANDS[name]
    proc = subprocess.run([sys.executable, "-m", "archspec.cli", *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    tex = proc.stdout
    assert tex.lstrip("%").count(r"\documentclass") == 1 and tex.rstrip().endswith(r"\end{document}")
    assert latex.GEOMETRY in tex
    check_compiles_on_a4(tmp_path, name, tex)


@pytest.mark.slow
@pytest.mark.skipif(not has_standalone("report"), reason="archspec report has no --standalone yet")
def test_cli_report_standalone_tex_files_compile_on_a4(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "archspec.cli", "report", "presnet50", "--against", "resnet50",
                           "-o", str(out), "--standalone"], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("*.tex"))
    assert files
    for path in files:
        folder = tmp_path / path.stem
        folder.mkdir()
        check_compiles_on_a4(folder, path.stem, path.read_text(encoding="utf-8"))
