"""archjax tests: a package, so that tests/experiments is imported as tests.experiments.

Without this file pytest imports tests/experiments/ as the top-level package
``experiments``, and ``experiments.train`` then comes from whichever checkout pip
installed rather than from the one under test.
"""
