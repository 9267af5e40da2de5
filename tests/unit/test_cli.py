"""The `lakeforge` CLI's own logic (its commands are exercised by the stage and integration tests)."""

from __future__ import annotations

from lakeforge.cli import pause_report


def test_pause_reports_the_state_after_the_change_not_airflows_old_one():
    # Airflow prints the states from before the change: [{"dag_id": …, "is_paused": <old>}]
    assert pause_report(True, '[{"dag_id": "movie_reviews", "is_paused": false}]\n') == "movie_reviews: paused"
    logged = '2026-12-03T17:04:02Z [warning  ] Could not import graphviz\n'  # Airflow logs to stdout too
    assert pause_report(False, logged + '[{"dag_id": "a", "is_paused": "True"}, {"dag_id": "b", "is_paused": "True"}]') \
        == "a: unpaused\nb: unpaused"
    assert pause_report(True, logged + "No unpaused DAGs were found\n").startswith(
        "nothing changed: no matching DAG was unpaused")
