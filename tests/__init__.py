"""archjax tests (a package, so that tests/experiments/ is tests.experiments and never shadows experiments/)."""
