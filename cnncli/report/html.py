"""The page's building blocks: escaped text, tables, sections, figures as data-URI PNGs, and the
page itself with its CSS inline.

Nothing here refers outside the file: every picture is a `data:image/png;base64,...` URI, the
only links are `#section` anchors, and there is no script, font or style sheet to fetch.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from typing import Any

FIGURE_DPI = 72  # figures are drawn in inches; 72 dpi keeps the page small and still legible

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
       margin: 0; background: #f6f7f9; }
header.page { background: #22303c; color: #fff; padding: 14px 28px; }
header.page h1 { margin: 0 0 4px 0; font-size: 22px; }
header.page p { margin: 0; color: #c9d3dc; }
nav { padding: 6px 28px; background: #e8ecf0; font-size: 13px; }
nav a { margin-right: 14px; color: #22303c; text-decoration: none; }
main { padding: 8px 28px 40px 28px; }
section { background: #fff; border: 1px solid #dde2e7; border-radius: 6px; margin: 16px 0; padding: 10px 18px; }
h2 { font-size: 18px; margin: 6px 0 10px 0; }
h3 { font-size: 15px; margin: 14px 0 6px 0; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { padding: 3px 9px; border-bottom: 1px solid #e4e7eb; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.diff td { background: #fff4cc; }
tr.section td { border-top: 2px solid #b8c2cc; }
.missing { background: #fdecea; border-left: 4px solid #d93025; padding: 6px 10px; margin: 6px 0; }
.note { color: #5f6b76; font-size: 13px; }
.figs { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 12px; color: #333; max-width: 480px; }
img { max-width: 100%; height: auto; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #dde2e7; border-radius: 5px; padding: 6px; background: #fafbfc; }
.card.wrong figcaption b { color: #b3261e; }
.card.right figcaption b { color: #1e7d32; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 4px 0; }
dl.facts dt { font-weight: 600; color: #44505c; }
dl.facts dd { margin: 0; }
.status-finished { color: #1e7d32; font-weight: 600; }
.status-running { color: #8a6d00; font-weight: 600; }
.status-failed, .status-dead, .status-interrupted, .status-unknown { color: #b3261e; font-weight: 600; }
pre { background: #f4f6f8; padding: 8px; overflow-x: auto; font-size: 12px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def number(value: Any, spec: str = ".4f") -> str:
    """A number as text, or '-' for None; non-numbers as they are."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return format(value, spec)


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_png(fig: Any, dpi: int = FIGURE_DPI) -> bytes:
    """A matplotlib figure as PNG bytes (the figure's own canvas; no pyplot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def figure(fig: Any, caption: str = "", *, dpi: int = FIGURE_DPI, alt: str = "") -> str:
    """<figure> with the figure inline as a PNG data URI, and an optional (HTML) caption."""
    img = f'<img src="{png_uri(figure_png(fig, dpi))}" alt="{esc(alt or caption)}">'
    return f"<figure>{img}" + (f"<figcaption>{caption}</figcaption>" if caption else "") + "</figure>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric_from: int | None = None,
          row_classes: Sequence[str] | None = None, cls: str = "") -> str:
    """A table of escaped cells; columns from `numeric_from` on are right-aligned numbers."""
    def cell(tag: str, i: int, v: Any) -> str:
        num = numeric_from is not None and i >= numeric_from
        return f"<{tag}{' class=num' if num else ''}>{esc(v)}</{tag}>"

    out = [f"<table{f' class={cls}' if cls else ''}><thead><tr>"
           + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        rc = row_classes[k] if row_classes and k < len(row_classes) and row_classes[k] else ""
        out.append(f"<tr{f' class={rc}' if rc else ''}>" + "".join(cell("td", i, v) for i, v in enumerate(row))
                   + "</tr>")
    return "".join(out) + "</tbody></table>"


def facts(items: Iterable[tuple[str, str]]) -> str:
    """A definition list of (label, HTML) pairs."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def missing(text: str) -> str:
    """A visible note that something the page would show does not exist."""
    return f'<p class="missing">{esc(text)}</p>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: header, a table of contents, the sections (anchor, title, body HTML)."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><header class=\"page\"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p>"
            f"</header><nav>{nav}</nav><main>{body}</main></body></html>\n")
