"""Markdown and HTML reports written from tables (never from fixed result text)."""

from __future__ import annotations

import html
import math

import pandas as pd


def md_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append("n/a" if math.isnan(v) else format(v, floatfmt))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_to_html(md: str, title: str) -> str:
    """The report's Markdown as a standalone HTML page: CommonMark plus tables (markdown-it-py), raw
    HTML in the text escaped, never passed through."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;} table{border-collapse:collapse;}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%;} th{background:#eee;} img{max-width:100%;}"
        "blockquote{border-left:4px solid #d9822b;background:#fff8ef;margin:1em 0;padding:.4em 1em;}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + body + "</body></html>\n"
    )
