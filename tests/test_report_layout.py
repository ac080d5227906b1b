"""The report as a reader sees it: the PDF's pages (no figure across a page edge, no heading alone at
a page foot, a figure and its caption together) from WeasyPrint's layout boxes, and the HTML in
headless Chromium at 1280 and 800 px (no horizontal overflow, the first table on the first screen,
the headline figure within 1.5 screens), screenshots saved under tmp_path."""
import pytest

from tests.helpers.fake_report_runs import write_kinds_run
from robust_atp.report.html import build_report

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
HEADINGS = ("h1", "h2", "h3", "h4", "summary")
EDGE = 0.5  # px of rounding


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A run with every kind of condition, its report in both formats, and the PDF's layout."""
    from robust_atp.report.pdf import render_document

    run = write_kinds_run(tmp_path_factory.mktemp("layout") / "run", n=30)
    paths = build_report(run, ("html", "pdf"), n_boot=300)
    return paths, render_document(paths["html"].read_text())


def _content(page):
    """(page box, the root box's descendants) of one page: margin boxes (the page number) excluded."""
    box = page._page_box
    return box, list(box.children[0].descendants())


@pytest.mark.slow
def test_the_pdf_pages_hold_every_figure_and_no_heading_ends_a_page(report):
    from pypdf import PdfReader

    paths, doc = report
    assert len(doc.pages) == len(PdfReader(paths["pdf"]).pages) >= 3
    images, figures_on = 0, {}
    for number, page in enumerate(doc.pages, 1):
        box, boxes = _content(page)
        top, left = box.content_box_y(), box.content_box_x()
        bottom, right = top + box.height, left + box.width
        for b in boxes:
            if type(b).__name__.endswith("ReplacedBox"):
                images += 1
                y, x = b.border_box_y(), b.border_box_x()
                assert top - EDGE <= y and y + b.border_height() <= bottom + EDGE, f"page {number}: image across the edge"
                assert left - EDGE <= x and x + b.border_width() <= right + EDGE, f"page {number}: image too wide"
            if b.element_tag == "figure":
                figures_on.setdefault(b.element.get("id"), set()).add(number)
        for h in (b for b in boxes if b.element_tag in HEADINGS and type(b).__name__ == "BlockBox"):
            below = h.border_box_y() + h.border_height() - EDGE
            inside = {id(d) for d in h.descendants()}
            after = [b for b in boxes if id(b) not in inside and b.border_box_y() >= below
                     and (type(b).__name__ in ("TextBox",) or type(b).__name__.endswith("ReplacedBox"))]
            text = "".join(t.text for t in h.descendants() if hasattr(t, "text"))[:40]
            assert after, f"page {number}: heading {h.element_tag} {text!r} ends the page"
    assert images == 7  # every figure, once each, nowhere cut in two
    split = {fig: pages for fig, pages in figures_on.items() if len(pages) > 1}
    assert split == {} and len(figures_on) == 7


@pytest.mark.parametrize("width, height", [(1280, 800), (800, 800)])
def test_the_html_at_1280_and_800_px(report, tmp_path, width, height):
    from playwright.sync_api import sync_playwright

    paths, _ = report
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(paths["html"].resolve().as_uri(), wait_until="load")
            page.screenshot(path=str(tmp_path / f"first_screen_{width}.png"))
            page.screenshot(path=str(tmp_path / f"page_{width}.png"), full_page=True)
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            table = page.evaluate("(() => { const r = document.getElementById('accuracy-summary')"
                                  ".getBoundingClientRect(); return [r.top, r.bottom, r.width]; })()")
            figure = page.evaluate("(() => { const i = document.querySelector('#plot-severity_headline img');"
                                   " const r = i.getBoundingClientRect();"
                                   " return [r.top, r.bottom, i.naturalWidth]; })()")
            sentence = page.evaluate("document.getElementById('ci-sentence').getBoundingClientRect().bottom")
        finally:
            browser.close()
    assert (tmp_path / f"first_screen_{width}.png").stat().st_size > 10_000
    assert scroll_width <= width, f"horizontal overflow: {scroll_width} px in a {width} px window"
    assert 0 <= table[0] and table[1] <= height and table[2] > 200  # the whole first table on the first screen
    assert sentence <= height
    assert figure[2] > 100 and figure[0] < 1.5 * height  # the headline figure starts within 1.5 screens
