"""lakeforge: Kafka -> S3 lake -> Spark curation -> training -> MLflow -> serving, on Airflow 3.

The library lives here, one module per stage; ``dags/`` wires it, ``jobs/`` launches it.
"""

__version__ = "0.1.0"


def code_version() -> str:
    """The git commit of the running code (recorded in lake commits and MLflow runs)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__
