"""What a rendered matplotlib figure shows as text, with where it is drawn: for checks that labels
do not collide."""
from __future__ import annotations

import itertools


def drawn_texts(fig) -> list:
    """(text, window bbox) of every non-empty text the figure draws: titles, suptitles, axis labels,
    the tick labels inside the axis' view interval, legends and annotations."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hidden = set()
    for ax in fig.get_axes():
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-9 <= tick.get_loc() <= hi + 1e-9 or not tick.get_visible():
                    hidden.update((id(tick.label1), id(tick.label2)))
    out = []
    for t in fig.findobj(Text):
        if id(t) in hidden or not t.get_visible() or not t.get_text().strip():
            continue
        box = t.get_window_extent(renderer)
        if box.width > 0 and box.height > 0:
            out.append((t.get_text(), box))
    return out


def collisions(fig, tolerance: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes overlap by more than `tolerance` pixels both ways."""
    bad = []
    for (a, ba), (b, bb) in itertools.combinations(drawn_texts(fig), 2):
        w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
        h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
        if w > tolerance and h > tolerance:
            bad.append((a, b))
    return bad


def outside(fig, tolerance: float = 1.0) -> list[str]:
    """Drawn texts that reach beyond the figure's edges (cut off in the PNG)."""
    w, h = fig.bbox.width, fig.bbox.height
    return [t for t, b in drawn_texts(fig)
            if b.x0 < -tolerance or b.y0 < -tolerance or b.x1 > w + tolerance or b.y1 > h + tolerance]
