"""Small HTML building blocks: escaped text, tables, embedded images. No templates, no external resources."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any


class Raw(str):
    """HTML that is inserted as is (everything else is escaped)."""


def esc(value: Any) -> str:
    """``value`` as escaped text, or unchanged when it is already :class:`Raw` HTML."""
    return value if isinstance(value, Raw) else escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A value as short human text: 4 significant digits, ``n/a`` for NaN and None, lists comma separated."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(f"({fmt(v)})" if isinstance(v, (list, tuple)) else fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def fmt_shape(values: Sequence[Any] | None) -> str:
    """``[16, 32, 32]`` -> ``16 × 32 × 32``."""
    if not values:
        return "n/a"
    return " × ".join(fmt(v) for v in values)


def table(headers: Sequence[Any] | None, rows: Iterable[Sequence[Any]], cls: str = "") -> Raw:
    """A table of escaped cells (pass :class:`Raw` for HTML); numbers are right-aligned."""
    parts = [f'<table class="{esc(cls)}">' if cls else "<table>"]
    if headers:
        parts.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>")
    parts.append("<tbody>")
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, (int, float)) and not isinstance(cell, bool)
            text = fmt(cell) if not isinstance(cell, str) else cell
            cells.append(f'<td class="num">{esc(text)}</td>' if numeric else f"<td>{esc(text)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return Raw("".join(parts))


def kv_table(items: Iterable[tuple[str, Any]]) -> Raw:
    """A two-column key/value table."""
    return table(None, ([key, value] for key, value in items), cls="kv")


def generic(value: Any) -> Raw:
    """Any JSON value as readable HTML: text as paragraphs, dicts as key/value tables, lists as bullets."""
    if isinstance(value, dict):
        return kv_table((str(k), generic(v) if isinstance(v, (dict, list)) else fmt(v)) for k, v in value.items())
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return Raw("<ul>" + "".join(f"<li>{esc(fmt(v))}</li>" for v in value) + "</ul>")
        return Raw("<ul>" + "".join(f"<li>{generic(v)}</li>" for v in value) + "</ul>")
    return Raw(f"<p>{esc(fmt(value))}</p>")


def img(data_uri: str, alt: str) -> Raw:
    return Raw(f'<img src="{esc(data_uri)}" alt="{esc(alt)}">')


def missing(what: str) -> Raw:
    """The note shown in place of a section whose input is absent or unreadable."""
    return Raw(f'<p class="missing">Not available: {esc(what)}</p>')


def section(anchor: str, title: str, body: Iterable[str]) -> Raw:
    return Raw(f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n' + "\n".join(body) + "\n</section>")


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1rem 2rem 3rem; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2rem; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
h3 { margin-bottom: 0.4rem; }
.sub { color: #666; margin-top: 0; }
nav { background: #f6f6f6; padding: 0.5rem 1rem; border-radius: 6px; }
nav a { margin-right: 1.1rem; color: #0b5cad; text-decoration: none; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv td:first-child { font-weight: 600; background: #fafafa; white-space: nowrap; }
table.kv table { margin: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 1.2rem; align-items: flex-start; }
.card { border: 1px solid #e3e3e3; border-radius: 6px; padding: 0.3rem 0.8rem; }
.missing { color: #9a6700; background: #fff8c5; padding: 0.4rem 0.7rem; border-radius: 4px; display: inline-block; }
.note { color: #555; font-size: 0.9rem; }
img { max-width: 100%; height: auto; display: block; margin: 0.3rem 0 0.8rem; }
figure { margin: 0 0 1.2rem; }
figcaption { color: #444; font-size: 0.9rem; }
.good { color: #1a7f37; } .bad { color: #cf222e; }
"""


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], sections: Iterable[str]) -> str:
    """The whole self-contained document."""
    links = "".join(f'<a href="#{esc(anchor)}">{esc(name)}</a>' for anchor, name in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n<p class=\"sub\">{esc(subtitle)}</p>\n<nav>{links}</nav>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
