"""Entry point: curate one raw partition on Spark and publish it as ``curated``.

    spark-submit jobs/curate.py --pipeline movie_reviews --partition 2026-11-23 [--run-id X]

A thin CLI over :func:`lakeforge.curate.run` (see :mod:`lakeforge.jobcli`); the last stdout line is
a JSON summary that the Airflow task pushes to XCom.
"""

from lakeforge.jobcli import main

if __name__ == "__main__":
    main("curate")
