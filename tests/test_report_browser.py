"""The report opened in headless Chromium: charts render, no console error, the table sorts.

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped with a reason when it is absent.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest
from _ledger_factory import RunSpec, add_run, realistic
from _require import missing

from wattwise import config
from wattwise.ledger import Ledger
from wattwise.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = "<script>alert(1)</script>"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
]


@pytest.fixture(autouse=True)
def _needs_chromium() -> None:
    if CHROMIUM is None:
        missing("headless Chromium is not installed (apt-get install chromium)")


# Appended to a copy of the report: sorts the summary table by total energy, both ways, and
# records the order it sees, so the dumped DOM shows whether the page's own sort script works.
SORT_PROBE = """
<script>
var table = document.getElementById("summary-table");
var head = Array.prototype.find.call(table.tHead.rows[0].cells, function (th) {
  return th.textContent === "total (Wh)";
});
function column() {
  return Array.prototype.map.call(table.tBodies[0].rows, function (row) {
    return row.cells[head.cellIndex].textContent.trim();
  }).join("|");
}
head.click();
document.body.setAttribute("data-ascending", column());
head.click();
document.body.setAttribute("data-descending", column());
</script>
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("browser")
    settings = config.load(env={}, cwd=tmp)
    with Ledger(tmp / "w.db") as ledger:
        realistic(ledger)
        add_run(ledger, RunSpec(HOSTILE, metrics={"val_acc": 0.5}))
        result = build_report(
            ledger, out_dir=tmp / "out", pricing="onprem,aws:p5.48xlarge", settings=settings
        )
    return result.html_path


def _chromium(
    tmp_path: pathlib.Path, page: pathlib.Path, *args: str
) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


def _console(stderr: str) -> list[str]:
    """Console messages (errors, warnings, logs) Chromium reports for the page."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_charts_render_without_console_errors(report: pathlib.Path, tmp_path) -> None:
    done = _chromium(tmp_path, report, "--dump-dom")
    dom = done.stdout
    assert _console(done.stderr) == []
    sections = dict(re.findall(r'<section id="(\w+)">(.*?)</section>', dom, re.S))
    for name in ("pareto", "epochs", "timelines", "cost", "growth", "lineage"):
        assert "<svg" in sections[name] and "<path" in sections[name], name
    # the hostile label is text in the DOM, never an element
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert dom.count("<script") == 1


def test_summary_table_sorts_by_any_column(report: pathlib.Path, tmp_path) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", SORT_PROBE + "</body>"))
    done = _chromium(tmp_path, probe, "--dump-dom")
    assert _console(done.stderr) == []
    ascending = re.search(r'data-ascending="([^"]*)"', done.stdout)
    descending = re.search(r'data-descending="([^"]*)"', done.stdout)
    assert ascending and descending, "the probe did not run"
    values = [float(v) for v in ascending.group(1).split("|")]
    assert len(values) == 6
    assert values == sorted(values) and values != sorted(values, reverse=True)
    assert [float(v) for v in descending.group(1).split("|")] == sorted(values, reverse=True)


def test_screenshot_is_not_blank(report: pathlib.Path, tmp_path) -> None:
    from matplotlib.image import imread

    png = tmp_path / "shot.png"
    done = _chromium(
        tmp_path, report, f"--screenshot={png}", "--window-size=1280,2400", "--hide-scrollbars"
    )
    assert _console(done.stderr) == []
    pixels = imread(png)[:, :, :3]
    assert pixels.shape[:2] == (2400, 1280)
    ink = (pixels < 0.9).any(axis=2).mean()  # share of pixels that are not (near) white
    assert 0.03 < ink < 0.6, ink
    # matplotlib's first category colour (the first architecture's points and bars) is drawn
    tab_blue = (abs(pixels - [0x1F / 255, 0x77 / 255, 0xB4 / 255]) < 0.02).all(axis=2)
    assert tab_blue.sum() > 200
