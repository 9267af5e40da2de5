"""Entry point: build the training rows of one curated partition and publish them as ``features``.

    spark-submit jobs/features.py --pipeline movie_reviews --partition 2026-11-23 [--run-id X]

A thin CLI (:mod:`lakeforge.stage.cli`) over :func:`lakeforge.features.run`; the last stdout line is
a JSON summary of the published partition.
"""

from lakeforge.features import run
from lakeforge.stage.cli import main

if __name__ == "__main__":
    main("features", run)
