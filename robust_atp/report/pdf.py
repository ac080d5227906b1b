"""report.pdf: the same HTML through WeasyPrint (print CSS in the template paginates it)."""
from __future__ import annotations

from pathlib import Path


def render_document(html: str):
    """The laid-out WeasyPrint document of the report (pages and their boxes)."""
    import logging

    from PIL import ImageFile

    # importing WeasyPrint sets PIL's process-wide LOAD_TRUNCATED_IMAGES, after which a truncated
    # dataset image would load silently instead of being refused: the flag is put back (the
    # report's own images are whole PNGs)
    truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        from weasyprint import HTML
        from weasyprint.urls import URLFetcher
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_flag

    logging.getLogger("weasyprint").setLevel(logging.ERROR)  # unsupported-CSS chatter is not an error here
    # data: URIs only, and a refused URL is an error: the PDF makes no request either
    fetcher = URLFetcher(allowed_protocols={"data"}, fail_on_errors=True)
    return HTML(string=html, url_fetcher=fetcher).render()


def write_pdf(html: str, path: Path) -> Path:
    render_document(html).write_pdf(path)
    return path
