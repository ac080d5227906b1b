"""Building a PDF must not change how the rest of the process loads images."""
from PIL import ImageFile

from robust_atp.report.pdf import render_document


def test_weasyprint_leaves_pil_refusing_truncated_images():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    document = render_document("<html><body><h1>x</h1></body></html>")
    assert len(document.pages) == 1
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
