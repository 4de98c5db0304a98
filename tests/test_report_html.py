"""The study report's HTML renders its Markdown as written (markdown-it-py): the synthetic-data notice
is a quote, tables are tables, images are images, and text from the data cannot inject HTML."""

import pandas as pd

from xray_assets.core.report import markdown_to_html, md_table


def test_notice_table_image_and_escaping():
    md = "\n".join(
        [
            "# Study report",
            "",
            "> These models learned from the synthetic sample data: the figures show the pipeline works.",
            "",
            md_table(pd.DataFrame({"task": ["nih_multi"], "map50": [0.5]})),
            "",
            "![map50](map50.png)",
            "",
            "- one",
            "- two",
            "",
            "a label from a CSV: <script>alert(1)</script>",
        ]
    )
    page = markdown_to_html(md, "Study report")
    assert "<blockquote>" in page and "&gt; These" not in page and "> These" not in page
    assert "<table>" in page and "<td>nih_multi</td>" in page and "<td>0.500</td>" in page
    assert '<img src="map50.png" alt="map50"' in page
    assert page.count("<li>") == 2 and page.count("<ul>") == 1, "one list, not one list per item"
    assert "<script>" not in page and "&lt;script&gt;" in page
