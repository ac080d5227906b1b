"""The progress bar: its ETA leaves the first unit (model warm-up) out, and it names the work."""
import io

from robust_atp.progress import Progress, eta_seconds, format_eta


def test_eta_is_from_the_units_after_the_first():
    assert eta_seconds(0, 10, 0.0) is None and eta_seconds(1, 10, 0.0) is None  # nothing measured yet
    # units 2 and 3 took 20 s after the first finished: 10 s each, 7 left
    assert eta_seconds(3, 10, 20.0) == 70.0
    assert eta_seconds(10, 10, 99.0) == 0.0 and eta_seconds(1, 1, 0.0) == 0.0
    assert [format_eta(s) for s in (None, 70.4, 3725.0)] == ["eta ?", "eta 01:10", "eta 1:02:05"]


def test_a_slow_first_unit_does_not_inflate_the_eta():
    now = [0.0]
    buf = io.StringIO()
    p = Progress(5, file=buf, clock=lambda: now[0])
    now[0] = 100.0  # the first unit: the model warms up
    p.advance()
    assert p.bar.postfix == "eta ?"
    now[0] = 102.0
    p.advance()  # 2 s for the second unit, 3 units left
    assert p.bar.postfix == "eta 00:06"
    p.close()


def test_the_bar_names_condition_and_method():
    buf = io.StringIO()
    p = Progress(2, file=buf, clock=lambda: 0.0)
    assert "loading the model" in buf.getvalue()
    p.working_on("image:fog@3", "atp@0.25")
    assert "image:fog@3 | atp@0.25" in buf.getvalue()
    p.working_on("clean", "full")  # within REDRAW_SECONDS: the name changes, the bar is drawn later
    assert p.bar.desc == "clean | full" and "clean | full" not in buf.getvalue()
    p.advance()
    assert "clean | full" in buf.getvalue()
    p.close()
