"""What a person sees in the audit report: report.html parsed (html.parser) and, where a headless browser
is installed, rendered; the headline led by the measure with the most leakage; best_worst.png's rows."""
import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")
from instahide.audit import AuditConfig, run_attack, run_audit  # noqa: E402
from instahide.challenge import make_challenge  # noqa: E402
from instahide.data import load_dataset  # noqa: E402
from instahide.report import figures  # noqa: E402

BROWSERS = ("chromium", "chromium-headless-shell", "google-chrome")


class Page(HTMLParser):
    """Tables (rows of cell texts), image sources, and the text of every paragraph and <pre>."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.paragraphs, self.pre = [], [], [], []
        self._cell = self._text = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag in ("p", "pre", "li"):
            self._text = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag in ("p", "li"):
            self.paragraphs.append(self._text)
            self._text = None
        elif tag == "pre":
            self.pre.append(self._text)
            self._text = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._text is not None:
            self._text += data


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "a"
    cfg = AuditConfig.make(n_private=12, T=8, public_size=300, attacks=("demix", "oracle"), research_seed=5,
                           distractors=200)
    return run_audit(cfg, out, log=lambda m: None), out


def check_page(page: Page, res) -> None:
    assert len(page.tables) >= 2
    for table in page.tables:  # every row has as many cells as the header: no cell broke into columns
        assert {len(r) for r in table} == {len(table[0])}, table
    main = page.tables[0]
    oracle = next(r for r in main if r[0] == "oracle")
    assert "|e|" in oracle[-1]  # the literal stays inside its cell
    assert main[0][1].startswith("rows identified") and main[0][3] == "Max_SSIM (per row, mean)"
    head = next(p for p in page.paragraphs if p.startswith("Measured leakage"))
    assert "threshold:" in head and ("identified" in head or "label" in head or "SSIM >" in head)
    assert any("Max_SSIM" in p for p in page.paragraphs)  # SSIM stays beside the lead
    assert not any(p.lstrip().startswith("{") or "{'" in p for p in page.paragraphs)  # no raw dicts
    config = json.loads(page.pre[-1])
    assert (config["k"], config["num_private"]) == (res.truth.k, res.truth.num_private) == (6, 2)


def test_report_html_tables_pictures_headline_and_configuration(audit):
    res, out = audit
    page = Page()
    page.feed((out / "report.html").read_text())
    check_page(page, res)
    # the SSIM distribution, the best of all attacks per image, one per scored attack
    assert len(page.images) == 2 + len(res.outcomes)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    for name in [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]:
        assert (out / name).is_file()


def test_summary_leads_with_the_measure_with_most_leakage(audit):
    res, out = audit
    summary = json.loads((out / "summary.json").read_text())
    measures = summary["measures"]
    assert summary["lead"] == measures[0] and summary["lead"]["threshold"]
    assert [m["above_chance"] for m in measures] == sorted((m["above_chance"] for m in measures), reverse=True)
    assert {m["measure"] for m in measures} == {"ssim", "identification", "labels"}
    assert all(m["attack"] == "demix" for m in measures)  # the oracle uses the truth: never the headline
    ident = summary["attacks"]["oracle"]["recognition"]["identification"]
    assert ident["candidates"] == 12 + 200 and ident["chance"] == pytest.approx(2 / 212, rel=0.2)
    outcome = json.loads((out / "attacks" / "oracle" / "outcome.json").read_text())
    assert outcome["recognition"]["identification"]["rate"] == ident["rate"]
    assert summary["headline"] in (out / "report.md").read_text()


def test_report_renders_in_a_headless_browser(audit, tmp_path):
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip(f"no headless browser installed (looked for {', '.join(BROWSERS)})")
    res, out = audit
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    page = Page()
    page.feed(dom)
    check_page(page, res)
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,2000", (out / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_worst_rows_are_distinct_images(tmp_path, monkeypatch):
    """The oracle decrypts all rows of an image to one picture: the best and worst rows must still
    show different images."""
    ds = load_dataset("digits", split="test")
    enc, lab, truth = make_challenge(ds.images[:12], ds.labels[:12], None, T=6, k=4, research_seed=1)
    outcome = run_attack("oracle", enc, lab, dict(truth.params), truth=truth)
    drawn = []
    monkeypatch.setattr(figures, "encryption_grid", lambda rows, path, title=None: drawn.extend(rows))
    figures.write_score_report(outcome.score, tmp_path, outcome.decryption, truth)
    assert len(drawn) == 4
    for _, images in drawn:
        flat = np.asarray(images).reshape(len(images), -1)
        assert len(flat) == 8 and len(np.unique(flat, axis=0)) == 8
