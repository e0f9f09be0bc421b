"""Benchmarks: each ``bench/<name>.py`` with a ``main() -> None`` prints figures and ratios against an anchor
measured in the same run; ``python -m bench [name ...]`` runs them (all of them when no name is given)."""
