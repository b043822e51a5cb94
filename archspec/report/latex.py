"""Everything archspec writes in LaTeX: text escaping, table floats that fit an A4 page, and the
standalone document around them (``--standalone``).

- :func:`escape`: plain text -> LaTeX text, typeset properly: ``224x224`` -> 224$\\times$224,
  ``2 x MACs``, ``3.76x``, ``x3`` with $\\times$; 'quoted' and "quoted" with TeX quotes; ``2^20``
  -> $2^{20}$; the special characters escaped; unicode (×, ·, ≤, −, →, Greek ...) as commands
  pdflatex knows. Each character is escaped once; a :class:`TeX` string (what escape returns)
  passes through unchanged, so escaping twice changes nothing.
- The fit rule (:func:`fit`), one for every table: a table whose estimated size (cell strings x
  Computer Modern widths at ``\\small``) fits the A4 portrait text area (margins 1.5cm) is set as
  it is; else one that fits the landscape page goes on a landscape page (pdflscape); else it is
  shrunk with ``\\resizebox`` to fit, on the orientation that shrinks it least.
- :func:`table_float` / :func:`booktabs_table`: the float, its first line a comment naming the
  packages the fragment needs (:func:`required_packages`); :func:`document`: a complete article.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

GEOMETRY = r"\usepackage[a4paper,margin=1.5cm]{geometry}"
PAGE_PT = (595.28, 841.89)  # A4 portrait, in TeX points (72.27/inch: 210mm x 297mm)
MARGIN_PT = 42.68  # 1.5cm
LINE_PT = 11.0  # the baselineskip of \small (9pt in a 10pt article; tables are set \small): one row
COLSEP_PT = 12.0  # 2 x \tabcolsep per column
RULE_PT = 4.0  # a booktabs rule with its separation
NEEDS = r"% A fragment for \input: the preamble needs "


class TeX(str):
    """LaTeX source (not plain text): :func:`escape` returns it unchanged."""


# -- escaping -----------------------------------------------------------------------------------

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}"}
_END = r"(?!\w|\.\d)"  # a number ends here
_TOKEN = re.compile(rf"""
    (?P<power>(?<![\w.])\d+\^-?\d+{_END})                       # 2^20, 10^9
  | (?P<dims>(?<![\w.])(?:\d+(?:\.\d+)?|[A-Z])(?:x(?:\d+(?:\.\d+)?|[A-Z]))+{_END})  # 224x224 3x3 HxW
  | (?P<after>(?<![\w.])\d+(?:\.\d+)?x(?!\w))                   # 2x, 3.76x
  | (?P<before>(?<![\w.])x(?:\d+|N)(?!\w))                      # x3, xN
  | (?P<word>(?<=\S\s)x(?=\s\S))                                # 2 x MACs
  | (?P<quote>['"])
  | (?P<dash>-(?=-))                                            # -- is not an en dash
  | (?P<special>[\\&%$\#_{{}}~^|<>])
  | (?P<other>[^\x20-\x7e])
""", re.X)
# Math-mode symbols (no extra package; text-mode alternatives would need the bitmap TS1 fonts).
_MATH = {"×": r"\times", "·": r"\cdot", "÷": r"\div", "±": r"\pm", "∓": r"\mp", "≤": r"\leq", "≥": r"\geq",
         "≠": r"\neq", "≈": r"\approx", "∼": r"\sim", "≡": r"\equiv", "−": "-", "→": r"\rightarrow",
         "←": r"\leftarrow", "↔": r"\leftrightarrow", "⇒": r"\Rightarrow", "⇐": r"\Leftarrow",
         "↑": r"\uparrow", "↓": r"\downarrow", "∞": r"\infty", "°": r"{}^{\circ}", "µ": r"\mu",
         "²": "{}^{2}", "³": "{}^{3}", "¹": "{}^{1}", "√": r"\surd", "∑": r"\sum", "∏": r"\prod", "∈": r"\in",
         "∂": r"\partial", "∇": r"\nabla", "•": r"\bullet", "∘": r"\circ", "⊕": r"\oplus", "⊗": r"\otimes",
         "¬": r"\neg", "∧": r"\wedge", "∨": r"\vee", "′": r"\prime", "⋯": r"\cdots", "⟨": r"\langle",
         "⟩": r"\rangle", "«": r"\ll", "»": r"\gg"}
_TEXT = {"–": "--", "—": "---", "…": r"\ldots{}", "‘": "`", "’": "'", "‚": ",", "“": "``", "”": "''", "„": ",,",
         "\u00a0": "~", "§": r"\S{}", "¶": r"\P{}", "©": r"\copyright{}", "£": r"\pounds{}", "€": "EUR",
         "¼": "1/4", "½": "1/2", "¾": "3/4", "¿": "?`", "¡": "!`", "Ð": "D", "ð": "d",
         "Þ": "Th", "þ": "th", "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h", "Ŧ": "T", "ŧ": "t", "Ŋ": "N", "ŋ": "n",
         "ĸ": "k", "ſ": "s", "Ŀ": "L", "ŀ": "l", "ŉ": "'n", "Ą": "A", "ą": "a", "Ę": "E", "ę": "e", "Į": "I",
         "į": "i", "Ų": "U", "ų": "u"}
_GREEK_LATIN = {"Alpha": "A", "Beta": "B", "Epsilon": "E", "Zeta": "Z", "Eta": "H", "Iota": "I", "Kappa": "K",
                "Mu": "M", "Nu": "N", "Omicron": "O", "Rho": "P", "Tau": "T", "Chi": "X"}
_GREEK_CAPS = {"Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega"}


def _other(ch: str):
    """(math?, LaTeX) pieces for a character outside printable ASCII."""
    if ch in _MATH:
        yield True, _MATH[ch]
    elif ch in _TEXT:
        yield False, _TEXT[ch]
    elif 0xC0 <= ord(ch) <= 0x17F:  # Latin letters: utf8 inputenc knows them in OT1 (the rest are above)
        yield False, ch
    elif m := re.fullmatch(r"GREEK (SMALL|CAPITAL) LETTER (\w+)", unicodedata.name(ch, "")):
        letter = {"LAMDA": "lambda", "FINAL SIGMA": "varsigma"}.get(m.group(2), m.group(2).lower())
        if m.group(1) == "CAPITAL":
            letter = letter.capitalize()
            yield (True, rf"\{letter}") if letter in _GREEK_CAPS else (False, _GREEK_LATIN.get(letter, "?"))
        else:
            yield (True, rf"\{letter}") if letter != "omicron" else (False, "o")
    elif unicodedata.category(ch).startswith(("C", "M")):  # control characters, lone accents: nothing to set
        return
    elif (base := unicodedata.normalize("NFKD", ch)) != ch:  # ǎ, ά: the letter pdflatex has; ﬁ: f, i
        for c in base:
            yield from _other(c) if ord(c) > 0x7E else [(False, escape(c))]
    else:
        yield False, "?"


def _tokens(text: str):
    """(math?, LaTeX) pieces of plain ``text``."""
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() > pos:
            yield False, text[pos:m.start()]
        pos = m.end()
        kind, s = m.lastgroup, m.group()
        if kind == "power":
            base, exp = s.split("^")
            yield True, f"{base}^{{{exp}}}"
        elif kind in ("dims", "after", "before", "word"):
            for i, part in enumerate(s.split("x")):
                if i:
                    yield True, r"\times"
                if part:
                    yield False, part
        elif kind == "quote":
            opening = m.start() == 0 or text[m.start() - 1] in " ([{"
            if s == '"':
                yield False, "``" if opening else "''"
            else:
                yield False, "`" if opening and m.end() < len(text) and text[m.end()] != " " else "'"
        elif kind == "dash":
            yield False, "-{}"
        elif kind == "special":
            yield False, _SPECIAL[s]
        else:
            yield from _other(s)
    if pos < len(text):
        yield False, text[pos:]


def escape(text) -> TeX:
    """Plain text -> LaTeX text mode, typeset properly (see the module's docstring); whitespace,
    newlines too, collapses to single spaces. A :class:`TeX` string is returned unchanged."""
    if isinstance(text, TeX):
        return text
    out, math = [], []
    for is_math, piece in _tokens(" ".join(str(text).split())):
        if is_math:
            math.append(piece)
            continue
        if math:  # adjacent math pieces share one $...$ ($$ would start display math)
            out.append("$" + " ".join(math) + "$")
            math = []
        out.append(piece)
    if math:
        out.append("$" + " ".join(math) + "$")
    return TeX("".join(out))


# -- the fit rule -------------------------------------------------------------------------------

# Character widths of cmr9 (\small), in pt; the estimate errs a little on the large side.
_WIDTHS = {**dict.fromkeys("0123456789a/*", 4.62), **dict.fromkeys("bdhnpu", 5.14), **dict.fromkeys("ceoz", 4.4),
           **dict.fromkeys("kqvxy", 4.88), **dict.fromkeys("ijl.,;:'![]`", 2.57), **dict.fromkeys("ft()", 3.6),
           "g": 4.62, "m": 7.71, "r": 3.62, "s": 3.65, "w": 6.68, " ": 3.1, "-": 3.08, "?": 4.37,
           **dict.fromkeys("%#&+=<>@MW", 7.71), **dict.fromkeys("IJ", 4.75), **dict.fromkeys("SZ", 5.65)}
_DEFAULT_WIDTH = 7.0  # other capitals, symbols


def text_width(text: str) -> float:
    """Estimated width in pt of plain ``text`` set in \\small Computer Modern."""
    return 1.04 * sum(_WIDTHS.get(ch, _DEFAULT_WIDTH) for ch in " ".join(str(text).split()))


def tex_text_width(tex: str) -> float:
    """Estimated width of LaTeX text: commands count as one character, braces and $ as none."""
    return text_width(re.sub(r"\\[a-zA-Z]+\s*|\\.|[{}$^]", lambda m: "m" if m.group().startswith("\\") else "", tex))


def tabular_width(column_widths) -> float:
    """A tabular's width in pt from its columns' content widths (\\tabcolsep both sides)."""
    return sum(w + COLSEP_PT for w in column_widths)


@dataclass(frozen=True)
class Fit:
    """Where a table goes: ``landscape`` (a pdflscape page) and ``width``, the fraction of
    \\linewidth it is resized to (None: its natural size)."""

    landscape: bool = False
    width: float | None = None


def text_area(landscape: bool) -> tuple[float, float]:
    """(width, height) in pt of the A4 text area (1.5cm margins), portrait or landscape."""
    w, h = (PAGE_PT[0] - 2 * MARGIN_PT, PAGE_PT[1] - 2 * MARGIN_PT)
    return (h, w) if landscape else (w, h)


def caption_height(caption_width: float, line_width: float) -> float:
    """The caption's height (its lines at \\small, the skip below it) for a text of this width."""
    return (int(caption_width / line_width) + 1) * LINE_PT + 12.0


def fit(width: float, height: float = 0.0, caption_width: float = 0.0) -> Fit:
    """The fit rule for a tabular of estimated ``width`` x ``height`` (pt) under a caption whose
    text is ``caption_width`` pt long: portrait as is, else landscape as is, else shrunk
    (\\resizebox) on the orientation where it shrinks least."""
    scales = []
    for landscape in (False, True):
        text_w, text_h = text_area(landscape)
        room = text_h - caption_height(caption_width, text_w)
        if width <= text_w and height <= room:
            return Fit(landscape)
        scales.append((min(text_w / width, room / height if height else 1.0), landscape))
    scale, landscape = max(scales, key=lambda s: (s[0], not s[1]))
    text_w, _ = text_area(landscape)
    return Fit(landscape, max(0.05, int(round(100 * scale * width / text_w, 6)) / 100))


# -- fragments and documents --------------------------------------------------------------------

_PACKAGES = (("booktabs", r"\\(toprule|midrule|bottomrule|cmidrule|addlinespace)\b"),
             ("amsmath", r"\\(text|dfrac|tfrac|boldsymbol|operatorname)\{|\\begin\{(align|gather|multline)"),
             ("graphicx", r"\\(resizebox|scalebox|rotatebox|includegraphics)\b"),
             ("pdflscape", r"\\begin\{landscape\}"))


def required_packages(tex: str) -> list[str]:
    """The ``\\usepackage`` lines LaTeX ``tex`` (fragments archspec writes) needs, in load order."""
    body = "\n".join(line for line in tex.splitlines() if not line.lstrip().startswith("%"))
    return [rf"\usepackage{{{name}}}" for name, pattern in _PACKAGES if re.search(pattern, body)]


def _label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9:._+-]+", "-", str(label)).strip("-") or "tab"


def table_float(tabular: str, caption: str, label: str, width: float, height: float,
                comments: tuple[str, ...] = ()) -> str:
    """A ``table`` float (\\small) around ``tabular`` (LaTeX, from \\begin{tabular} to \\end{tabular})
    placed by the fit rule from its estimated ``width`` x ``height`` (pt). ``caption``: plain
    text, or :class:`TeX`. The fragment opens with ``comments`` (each a line, without %), then a
    comment naming the packages it needs."""
    caption = escape(caption)
    where = fit(width, height, tex_text_width(caption))
    body = tabular.rstrip("\n")
    if where.width is not None:
        size = r"\linewidth" if where.width >= 1 else f"{where.width:.2f}\\linewidth"
        body = f"\\resizebox{{{size}}}{{!}}{{%\n{body}%\n}}"
    lines = [r"\begin{table}[htbp]", r"\centering", r"\small", rf"\caption{{{caption}}}", rf"\label{{{_label(label)}}}",
             body, r"\end{table}"]
    if where.landscape:
        lines = [r"\begin{landscape}"] + lines + [r"\end{landscape}"]
    packages = required_packages("\n".join(lines))
    head = [f"% {c}" for c in comments] + ([NEEDS + ", ".join(packages) + "."] if packages else [])
    return "\n".join(head + lines) + "\n"


def booktabs_table(frame, caption: str, label: str, header_rows: list[str] | None = None) -> str:
    """A table float from a pandas DataFrame of display strings; the first column left-aligned,
    the others right-aligned so that numbers line up; placed by the fit rule. ``header_rows``:
    raw LaTeX lines above the column names (e.g. \\multicolumn groups)."""
    cols = [str(c) for c in frame.columns]
    records = [[str(v) for v in row] for row in frame.astype(str).values.tolist()]
    lines = [rf"\begin{{tabular}}{{l{'r' * (len(cols) - 1)}}}", r"\toprule"]
    lines += header_rows or []
    lines.append(" & ".join(escape(c) for c in cols) + r" \\")
    lines.append(r"\midrule")
    total = len(records) > 1 and records[-1][0].lower() == "total"
    for i, row in enumerate(records):
        if total and i == len(records) - 1:
            lines.append(r"\midrule")
        lines.append(" & ".join(escape(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    widths = [max(text_width(v) for v in column) for column in zip(cols, *records)]
    rows = 1 + len(records) + sum(1 for line in header_rows or [] if line.rstrip().endswith("\\\\"))
    height = rows * LINE_PT + (3 + total + bool(header_rows)) * RULE_PT
    return table_float("\n".join(lines), caption, label, tabular_width(widths), height)


def document(body) -> str:
    """A complete A4 article (compiles with pdflatex from texlive-latex-base + -recommended) around
    ``body``: one fragment or several (a list, or joined). The preamble loads what they need; their
    package comments are dropped, and a comment block opening the body heads the file."""
    text = body if isinstance(body, str) else "\n".join(body)
    lines = [line for line in text.splitlines() if not line.startswith(NEEDS)]
    lead = 0
    while lead < len(lines) and lines[lead].startswith("%"):
        lead += 1
    preamble = [r"\documentclass{article}", GEOMETRY, r"\usepackage[utf8]{inputenc}",
                *required_packages(text), r"\pagestyle{empty}", r"\begin{document}"]
    return "\n".join(lines[:lead] + preamble + lines[lead:] + [r"\end{document}"]) + "\n"
