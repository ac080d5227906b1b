"""`python -m robust_atp.regress BASELINE CURRENT [--max-drop POINTS] [--alpha A] [--junit FILE]`:
the CI gate (see robust_atp.report.regress)."""
from .report.regress import main

if __name__ == "__main__":
    raise SystemExit(main())
