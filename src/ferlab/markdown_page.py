"""The HTML twin of a Markdown report: headings, paragraphs, tables and embedded plots."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path


def markdown_page(md: str, root: Path) -> str:
    """A self-contained page: the Markdown's tables and text, plots embedded as data URLs."""
    body = []
    rows: list[str] = []

    def flush_table() -> None:
        if rows:
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            head, data = cells[0], [c for c in cells[2:]]
            body.append(
                "<table><tr>"
                + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                + "</tr>"
                + "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                    for r in data
                )
                + "</table>"
            )
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append(line)
            continue
        flush_table()
        if m := re.match(r"!\[(.*)\]\((.*)\)", line):
            data = base64.b64encode((root / m.group(2)).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">')
        elif m := re.match(r"(#+) (.*)", line):
            n = len(m.group(1))
            body.append(f"<h{n}>{html.escape(m.group(2))}</h{n}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>ferlab report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
