"""``lakeforge pipeline new`` (:mod:`~lakeforge.scaffold.new`: a starter pipeline YAML from a labelled
file, every guess stated) and ``lakeforge pipeline check`` (:mod:`~lakeforge.scaffold.check`: a YAML's
problems, each naming the field and the fix). Neither imports Spark, torch or MLflow: the DAG file
calls :func:`check_pipeline` while parsing.
"""

from lakeforge.scaffold.check import check_pipeline, pipeline_path, summary
from lakeforge.scaffold.new import new_pipeline

__all__ = ["check_pipeline", "new_pipeline", "pipeline_path", "summary"]
