"""`dsmooth report`: a self-contained HTML page, or Markdown with PNGs beside it."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import pytest

from dsmooth.cli import main

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"


@pytest.fixture
def logs(tmp_path):
    paths = []
    for sigma, rows in {
        "0.25": [
            "0\t1\t1\t0.4\t1\t0:00:01",
            "1\t2\t2\t0.1\t1\t0:00:01",
            "2\t0\t-1\t0.0\t0\t0:00:01",
        ],
        "0.50": [
            "0\t1\t1\t0.9\t1\t0:00:02",
            "1\t2\t0\t0.3\t0\t0:00:02",
            "2\t0\t0\t0.2\t1\t0:00:02",
        ],
    }.items():
        path = tmp_path / f"sigma_{sigma}.tsv"
        path.write_text("\n".join([HEADER, *rows]) + "\n")
        paths.append(path)
    return paths


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.images, self.headings, self._tag = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, _tag):
        self._tag = None

    def handle_data(self, data):
        if self._tag in ("td", "th") and data.strip():
            self.cells.append(data.strip())
        if self._tag == "h2":
            self.headings.append(data.strip())


@pytest.mark.usefixtures("logs")  # the sigma_*.tsv logs the report globs in tmp_path
def test_html_report_is_self_contained(tmp_path, tiny_classifier_file, tiny_data_file):
    out = tmp_path / "report.html"
    argv = ["report", "--envelope", "--label", f"S={tmp_path}/sigma_*.tsv", "--radii", "0:0.5:0.25"]
    argv += ["--out", str(out), "--title", "My run"]
    argv += ["--data", str(tiny_data_file), "--classifier", str(tiny_classifier_file)]
    assert main(argv) == 0
    page = Collect()
    page.feed(out.read_text())
    assert page.headings == [
        "Settings",
        "Certified accuracy",
        "Per log",
        "Curves",
        "Sample images",
    ]
    # envelope over the two logs: at 0.25 both have 1/3 certified; tie -> higher clean (2/3)
    row = page.cells[page.cells.index("S") :][:4]
    assert row == ["S", "(67)67", "(67)33", "(67)33"]
    assert "sigma_0.25.tsv" in page.cells
    assert "sigma_0.50.tsv" in page.cells
    assert len(page.images) == 2
    for src in page.images:  # embedded PNGs, no external files
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.glob("*.png")) == []
    assert "<title>My run</title>" in out.read_text()


def test_markdown_report_writes_pngs_beside_it(tmp_path, logs):
    out = tmp_path / "run.md"
    assert main(["report", *map(str, logs), "--radii", "0", "0.5", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| sigma_0.25.tsv | 67 | 0 |" in text
    assert "| sigma_0.50.tsv | 67 | 33 |" in text
    (image,) = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert image == "run_curves.png"
    assert (tmp_path / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Sample images" not in text


def test_report_warnings_and_errors(tmp_path, logs, capsys):
    short = tmp_path / "short.tsv"
    short.write_text(HEADER + "\n0\t1\t1\t0.4\t1\t1\n")
    out = tmp_path / "r.html"
    assert main(["report", str(logs[0]), str(short), "--out", str(out)]) == 0
    assert "different image sets" in out.read_text()
    assert "dsmooth: warning:" in capsys.readouterr().err
    for argv, message in [
        ([str(logs[0]), "--out", str(tmp_path / "r.txt")], ".html"),
        ([str(logs[0]), "--out", str(tmp_path / "no" / "r.html")], "does not exist"),
        ([str(logs[0]), "--out", str(out), "--data", "x.npz"], "both --data and --classifier"),
    ]:
        assert main(["report", *argv]) == 2
        assert message in capsys.readouterr().err
