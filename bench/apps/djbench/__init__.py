"""The Django project of bench/e2e.py's Django rows: one view, one ORM query (djbench.settings)."""
