"""Entry point: build the training rows of one curated partition and publish them as ``features``.

    spark-submit jobs/features.py --pipeline movie_reviews --partition 2026-11-23 [--run-id X]

A thin CLI over :func:`lakeforge.features.run` (see :mod:`lakeforge.jobcli`); the last stdout line is
a JSON summary that the Airflow task pushes to XCom.
"""

from lakeforge.jobcli import main

if __name__ == "__main__":
    main("features")
