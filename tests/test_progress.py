"""The progress bar: its ETA leaves the first unit (model warm-up) out, and it names the work."""
import io

from robust_atp.progress import Progress, eta_seconds, format_eta


def test_eta_is_from_the_steps_after_the_first_unit():
    assert eta_seconds(0, 10, None, 0) is None and eta_seconds(3, 10, None, 0) is None  # first unit running
    assert eta_seconds(3, 10, 0.0, 3) is None  # it ended: nothing after it measured yet
    # the first unit held 3 steps; steps 4 and 5 took 20 s after it: 10 s each, 5 left
    assert eta_seconds(5, 10, 20.0, 3) == 50.0
    assert eta_seconds(10, 10, 99.0, 3) == 0.0 and eta_seconds(1, 1, None, 0) == 0.0
    assert [format_eta(s) for s in (None, 70.4, 3725.0)] == ["eta ?", "eta 01:10", "eta 1:02:05"]


def test_a_slow_first_unit_does_not_inflate_the_eta():
    now = [0.0]
    p = Progress(6, file=io.StringIO(), clock=lambda: now[0], mininterval=0)
    now[0] = 100.0  # the first unit, two steps: the model warms up
    p.step()
    p.step()
    p.unit_done()
    assert p.bar.postfix == "eta ?"
    now[0] = 102.0
    p.step()  # 2 s for the next step, 3 steps left
    assert p.bar.postfix == "eta 00:06"
    p.unit_done()  # only the first unit's end matters
    now[0] = 103.0
    p.step()  # 3 s for 2 steps: 1.5 s each, 2 left
    assert p.bar.postfix == "eta 00:03"
    p.close()


def test_the_bar_names_condition_and_method():
    buf = io.StringIO()
    p = Progress(2, file=buf, clock=lambda: 0.0, mininterval=0)
    assert "loading the model" in buf.getvalue()
    p.working_on("image:fog@3", "atp@0.25")
    p.step()
    assert "image:fog@3 | atp@0.25:  50%" in buf.getvalue() and "1/2 steps" in buf.getvalue()
    p.close()
