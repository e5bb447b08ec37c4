"""Benchmarks that print and write figures: ``python -m sctrain.bench NAME ...`` (see ``__main__``)."""


def setup_logging() -> None:
    """What a benchmark's command line shows: timestamped warnings, and sctrain's own progress (INFO)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("sctrain").setLevel(logging.INFO)
