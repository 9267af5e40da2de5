"""Entry point: curate one raw partition on Spark and publish it as ``curated``.

    spark-submit jobs/curate.py --pipeline movie_reviews --partition 2026-11-23 [--run-id X]

A thin CLI (:mod:`lakeforge.stage.cli`) over :func:`lakeforge.curate.run`; the last stdout line is
a JSON summary of the published partition.
"""

from lakeforge.curate import run
from lakeforge.stage.cli import main

if __name__ == "__main__":
    main("curate", run)
