"""Benchmarks of Colmena's overheads; run ``python -m benchmarks`` (or ``make bench``).

Every figure is reported next to a baseline measured in the same run, since absolute times on
shared machines drift from run to run. Results are written into docs/performance.md between
markers, leaving the hand-written analysis around them untouched.
"""
