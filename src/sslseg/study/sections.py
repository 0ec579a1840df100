"""The report's format-neutral model: a list of `Section`s, each a heading and its blocks (text, tables,
figures, verdicts, preformatted text), written once and rendered to both HTML and Markdown, so the two
formats of the study report cannot drift apart. The Markdown summary leaves the figures out."""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass(frozen=True)
class Text:
    """A paragraph; a `note` is an explanation, set small and grey in HTML."""

    text: str
    note: bool = False


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells, the first column naming the row."""

    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    """A PNG (base64), embedded in the HTML page; the Markdown summary leaves figures out."""

    png: str


@dataclass(frozen=True)
class Verdicts:
    """The answers, one per dataset: highlighted boxes in HTML, a bulleted list in Markdown."""

    items: list[str]


@dataclass(frozen=True)
class Code:
    """Preformatted text, such as the study's settings."""

    text: str


Block = Text | Table | Figure | Verdicts | Code


@dataclass(frozen=True)
class Section:
    """A heading (level 2 or 3) and its blocks: written once, rendered to HTML and to Markdown."""

    title: str
    blocks: list[Block]
    level: int = 2


def block_html(block: Block) -> str:
    """One block as HTML, its text escaped."""
    match block:
        case Text(text, note):
            return f"<p class='note'>{html.escape(text)}</p>" if note else f"<p>{html.escape(text)}</p>"
        case Table(header, rows):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            return f"<table><tr>{head}</tr>{body}</table>"
        case Figure(png):
            return f'<img src="data:image/png;base64,{png}">'
        case Verdicts(items):
            return "\n".join(f"<div class='verdict'>{html.escape(t)}</div>" for t in items)
        case Code(text):
            return f"<pre>{html.escape(text)}</pre>"
    raise TypeError(f"not a report block: {block!r}")


def block_markdown(block: Block) -> str | None:
    """One block as Markdown; None for a figure, which the summary leaves out."""
    match block:
        case Text(text, _):
            return text
        case Table(header, rows):
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
        case Figure():
            return None
        case Verdicts(items):
            return "\n".join(f"- {t}" for t in items)
        case Code(text):
            return f"```\n{text.rstrip()}\n```"
    raise TypeError(f"not a report block: {block!r}")


def section_html(section: Section) -> str:
    """A section as HTML: its heading, then its blocks."""
    level = section.level
    heading = f"<h{level}>{html.escape(section.title)}</h{level}>"
    return "\n".join([heading, *(block_html(b) for b in section.blocks)])


def section_markdown(section: Section) -> str:
    """A section as Markdown; empty when it holds only figures (a heading over nothing says nothing)."""
    body = [text for b in section.blocks if (text := block_markdown(b)) is not None]
    return "\n\n".join([f"{'#' * section.level} {section.title}", *body]) if body else ""


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
.verdict{background:#eef6ee;border-left:4px solid #4a4;padding:0.6em 1em;margin:0.5em 0}
.note{color:#666;font-size:0.9em}
img{max-width:100%}
"""


def render_html(title: str, sections: list[Section]) -> str:
    """The report as one self-contained HTML page."""
    page = [f"<!doctype html><meta charset='utf-8'><title>sslseg {html.escape(title)}</title>"]
    page.append(f"<style>{CSS}</style><h1>{html.escape(title)}</h1>")
    return "\n".join(page + [section_html(s) for s in sections])


def render_markdown(title: str, sections: list[Section]) -> str:
    """The report as Markdown, without its figures."""
    parts = [f"# {title}", *(section_markdown(s) for s in sections)]
    return "\n\n".join(p for p in parts if p) + "\n"
