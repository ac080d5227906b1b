"""report.pdf: the same HTML through WeasyPrint (print CSS in the template paginates it)."""
from __future__ import annotations

from pathlib import Path


def render_document(html: str):
    """The laid-out WeasyPrint document of the report (pages and their boxes)."""
    import logging

    from weasyprint import HTML
    from weasyprint.urls import URLFetcher

    logging.getLogger("weasyprint").setLevel(logging.ERROR)  # unsupported-CSS chatter is not an error here
    # data: URIs only, and a refused URL is an error: the PDF makes no request either
    fetcher = URLFetcher(allowed_protocols={"data"}, fail_on_errors=True)
    return HTML(string=html, url_fetcher=fetcher).render()


def write_pdf(html: str, path: Path) -> Path:
    render_document(html).write_pdf(path)
    return path
