"""How the training task is launched: the ``torchrun`` command line of the DAG's ``train_model`` task.

Imported by the DAG file at parse time: nothing here (or in :mod:`lakeforge.train`'s eager imports)
loads torch.
"""

from __future__ import annotations

from lakeforge.config import REPO_ROOT


def torchrun_command(pipeline_name: str, partition: str) -> str:
    """The ``train_model`` task's bash command (a Jinja template): torchrun over ``jobs/train.py``.

    * one process per visible GPU (``nvidia-smi``), else one CPU process;
    * ``exec``: bash becomes the launcher, so Airflow's kill (SIGTERM to the process group) reaches
      torchrun, which forwards it to its workers;
    * ``setpriv --pdeathsig TERM``: torchrun gets SIGTERM when its parent, the Airflow task process,
      dies even by ``kill -9``; the workers in turn die with torchrun (``PR_SET_PDEATHSIG`` in
      ``jobs/train.py``). No orphan keeps training beside the retry;
    * ``--max-restarts=0``: a crashed worker fails the task; Airflow's retry resumes from the last
      checkpoint of the same DAG run (keyed by dag_id/run_id, which torchrun's workers inherit from
      the task's ``AIRFLOW_CTX_*`` environment).
    """
    return (
        "NPROC=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true); "
        '[ "${NPROC:-0}" -gt 0 ] || NPROC=1; '
        'PDEATH=""; command -v setpriv >/dev/null && PDEATH="setpriv --pdeathsig TERM"; '
        "exec $PDEATH torchrun --standalone --nproc-per-node=$NPROC --max-restarts=0 "
        f"{REPO_ROOT / 'jobs' / 'train.py'} --pipeline {pipeline_name} --partition {partition} "
        "{% if params.max_steps %}--max-steps {{ params.max_steps }}{% endif %}"
    )
