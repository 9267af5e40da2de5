"""The evaluation set the gate scores every candidate on: the test split of the run's features
partition (rows held out from training by near-duplicate cluster, see :mod:`lakeforge.features.split`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lakeforge.stage.run import StageRun

if TYPE_CHECKING:
    import pyarrow as pa

#: The split of the features partition the gate evaluates on.
EVAL_SPLIT = "test"


def eval_table(stage: StageRun) -> "pa.Table":
    """``text`` and ``label`` of the published features partition's test rows (at the snapshot of the
    commit that published it)."""
    import pyarrow.compute as pc

    lake = stage.lake
    table = lake.read_table(lake.read_commit("features", stage.pipeline.name, stage.partition),
                            columns=["text", "label", "split"])
    return table.filter(pc.equal(table["split"], EVAL_SPLIT)).drop_columns(["split"])
