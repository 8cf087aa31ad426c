"""A self-contained HTML page: inline CSS, images as base64 ``data:image/png`` URIs, no external
assets, scripts or links, so the one file can be opened anywhere and shared as is."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["png_data_uri", "img", "table", "key_value_table", "section", "page", "fmt", "esc"]

CSS = """
:root { --fg:#1d232a; --muted:#5b6670; --line:#d8dee4; --bg:#ffffff; --panel:#f6f8fa;
        --good:#1a7f37; --bad:#cf222e; --warn:#9a6700; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 8px; }
p, li { max-width: 900px; }
.sub { color: var(--muted); margin: 0 0 12px; }
nav { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; white-space: nowrap; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.good { color: var(--good); font-weight: 600; }
td.bad { color: var(--bad); font-weight: 600; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 14px; }
figure { margin: 0; background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
figure.wide { grid-column: 1 / -1; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
.banner { border-radius: 6px; padding: 10px 14px; margin: 12px 0; border: 1px solid; }
.banner.bad { background: #ffebe9; border-color: #ff8182; color: #82071e; }
.banner.note { background: #fff8c5; border-color: #d4a72c; color: #4d2d00; }
.cols { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--muted); }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px;
      overflow-x: auto; font-size: 12.5px; }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, percent: bool = False) -> str:
    """A table cell: floats with 4 significant digits (or as a percentage), lists joined."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if percent:
            return f"{100 * value:.2f}%"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items()) or "–"
    return str(value)


def png_data_uri(png: bytes) -> str:
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not PNG data")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, caption: str = "", wide: bool = False) -> str:
    """A ``<figure>`` holding the PNG inline, with alt text and an optional caption (trusted HTML)."""
    cls = ' class="wide"' if wide else ""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure{cls}><img src="{png_data_uri(png)}" alt="{esc(alt)}">{cap}</figure>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], classes: Iterable[Sequence[str]] | None = None) -> str:
    """An HTML table; cells are escaped strings (pre-format numbers with :func:`fmt`)."""
    rows = [list(r) for r in rows]
    cls_rows = [list(c) for c in classes] if classes is not None else [[""] * len(r) for r in rows]
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row, cls in zip(rows, cls_rows):
        cells = "".join(f'<td class="{esc(c)}">{esc(v)}</td>' if c else f"<td>{esc(v)}</td>"
                        for v, c in zip(row, cls))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_value_table(items: dict[str, Any], header: Sequence[str] = ("setting", "value")) -> str:
    return table(header, [(k, fmt(v)) for k, v in items.items()], [("", "") for _ in items])


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]], footer: str = "",
         banners: Sequence[tuple[str, str]] = ()) -> str:
    """The whole document. ``sections``: ``(anchor, title, html body)``; ``banners``: ``(kind, text)``
    with kind ``bad`` or ``note``, shown above the contents."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    banner_html = "".join(f'<div class="banner {esc(k)}">{esc(t)}</div>' for k, t in banners)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p>{banner_html}<nav>{nav}</nav>"
            f"{body}<footer>{esc(footer)}</footer></main></body></html>\n")
