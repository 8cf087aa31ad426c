"""Command-line interface: ``selfsup train | eval | demo | preview | export | embed | report | compare``,
mirroring :mod:`selfsup.api` one to one (``main`` builds the parser and maps errors to exit codes)."""

from selfsup.cli.main import build_parser, main, print_scores

__all__ = ["build_parser", "main", "print_scores"]
