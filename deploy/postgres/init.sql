-- Databases of the lakeforge scale-out deployment. The postgres image runs this once, as
-- $POSTGRES_USER, when it initialises an empty data volume (docker-entrypoint-initdb.d).
-- Airflow, MLflow and the lake's Apache Iceberg catalog (pyiceberg's SqlCatalog and Spark's
-- JdbcCatalog share its tables) each get their own database; all connect as $POSTGRES_USER.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
CREATE DATABASE lakeforge_catalog;
