"""The report's one section model: a section rendered to HTML and to Markdown says the same things (every
paragraph, table cell, verdict and preformatted line), and only figures are left out of the Markdown."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from sslseg.study.analysis_schema import Analysis
from sslseg.study.sections import (
    Code,
    Figure,
    Section,
    Table,
    Text,
    Verdicts,
    render_html,
    render_markdown,
)

SECTIONS = [
    Section(
        "Verdict", [Verdicts(["d1: use simclr <p = 0.01>", "d2: no pretraining helps"]), Text("why & how")]
    ),
    Section(
        "aji, finetuned encoder",
        [
            Text("what the table shows", note=True),
            Figure("iVBORw0KGgo="),
            Table(["pretraining", "integral"], [["random", "0.900"], ["simclr", "1.020"]]),
        ],
        level=3,
    ),
    Section("Example predictions", [Figure("AAAA")], level=3),
    Section("Settings", [Code("name: t\nseeds: [0, 1]\n"), Text("footer", note=True)]),
]


class _Collect(HTMLParser):
    """The text of the HTML page, element by element: headings, paragraphs, cells, verdicts, code, images."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, list[str]] = {}
        self._tag: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":  # a void element: no data, no end tag
            self.found.setdefault("img", []).append(dict(attrs)["src"])
        else:
            self._tag = "verdict" if ("class", "verdict") in attrs else tag

    def handle_endtag(self, tag: str) -> None:
        self._tag = None

    def handle_data(self, data: str) -> None:
        if self._tag is not None:
            self.found.setdefault(self._tag, []).append(data)


def _html(sections: list[Section]) -> dict[str, list[str]]:
    parser = _Collect()
    parser.feed(render_html("Study “t”", sections))
    return parser.found


def test_html_and_markdown_say_the_same():
    page, md = _html(SECTIONS), render_markdown("Study “t”", SECTIONS)
    lines = md.splitlines()
    # headings: all in HTML; in Markdown all but the section of figures only
    assert page["h1"] == ["Study “t”"] and lines[0] == "# Study “t”"
    assert page["h2"] == ["Verdict", "Settings"] and {"## Verdict", "## Settings"} <= set(lines)
    assert page["h3"] == ["aji, finetuned encoder", "Example predictions"]
    assert "### aji, finetuned encoder" in lines and "Example predictions" not in md
    # verdicts: a highlighted box each in HTML, a bullet each in Markdown, the same texts in the same order
    verdicts = ["d1: use simclr <p = 0.01>", "d2: no pretraining helps"]
    assert page["verdict"] == verdicts and [x[2:] for x in lines if x.startswith("- ")] == verdicts
    # paragraphs
    assert page["p"] == ["why & how", "what the table shows", "footer"]
    assert all(p in lines for p in page["p"])
    # the table: the same cells, row by row
    cells = [["pretraining", "integral"], ["random", "0.900"], ["simclr", "1.020"]]
    assert page["th"] + page["td"] == [c for row in cells for c in row]
    md_rows = [[c.strip() for c in x.strip("|").split("|")] for x in lines if x.startswith("|")]
    assert md_rows == [cells[0], ["---", "---"], *cells[1:]]
    # preformatted settings, line by line
    assert page["pre"] == ["name: t\nseeds: [0, 1]\n"] and "```\nname: t\nseeds: [0, 1]\n```" in md
    # figures: embedded in HTML only
    assert page["img"] == ["data:image/png;base64,iVBORw0KGgo=", "data:image/png;base64,AAAA"]
    assert "base64" not in md


def test_html_escapes_text():
    page = render_html("t", [Section("<b>", [Text("a < b"), Table(["x&y"], [["<i>"]])])])
    assert "<b>" not in page and "&lt;b&gt;" in page and "a &lt; b" in page and "x&amp;y" in page
    assert "<td>&lt;i&gt;</td>" in page


def test_the_analysis_reader_refuses_unknown_fields():
    assert Analysis.from_dict({"study": "s", "datasets": {}}) == Analysis("s", {})
    with pytest.raises(ValueError, match="Analysis: unknown analysis fields \\['extra'\\]"):
        Analysis.from_dict({"study": "s", "datasets": {}, "extra": 1})
