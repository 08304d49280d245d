"""Studies on the engine (archjax.studies): ``python -m archjax.studies run <file>``."""
