-- Databases of the lakeforge scale-out deployment. The postgres image runs this once, as
-- $POSTGRES_USER, when it initialises an empty data volume (docker-entrypoint-initdb.d).
-- Airflow and MLflow each get their own database; both connect as $POSTGRES_USER.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
