"""The train_model task's command line (:func:`lakeforge.train.launch.torchrun_command`)."""

from __future__ import annotations

import jinja2

from lakeforge.config import REPO_ROOT
from lakeforge.train.launch import torchrun_command


def test_torchrun_command_is_the_tasks_bash_script():
    assert torchrun_command("movie_reviews", "{{ p }}") == (
        "NPROC=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true); "
        '[ "${NPROC:-0}" -gt 0 ] || NPROC=1; '
        'PDEATH=""; command -v setpriv >/dev/null && PDEATH="setpriv --pdeathsig TERM"; '
        "exec $PDEATH torchrun --standalone --nproc-per-node=$NPROC --max-restarts=0 "
        f"{REPO_ROOT / 'jobs' / 'train.py'} --pipeline movie_reviews --partition {{{{ p }}}} "
        "{% if params.max_steps %}--max-steps {{ params.max_steps }}{% endif %}"
    )


def test_max_steps_is_passed_only_when_the_run_sets_it():
    template = jinja2.Template(torchrun_command("movie_reviews", "dt=2026-11-23"))
    plain, smoke = template.render(params={}), template.render(params={"max_steps": 5})
    assert plain.endswith("--pipeline movie_reviews --partition dt=2026-11-23 ")
    assert smoke.endswith("--partition dt=2026-11-23 --max-steps 5")
    # torchrun replaces the shell and dies with the task; a crashed worker fails the try (Airflow retries)
    assert "exec $PDEATH torchrun" in plain and "--max-restarts=0" in plain and "setpriv --pdeathsig TERM" in plain
