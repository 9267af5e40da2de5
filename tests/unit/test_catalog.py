"""The catalog's names, schemas and Spark settings (no server: see tests/integration/test_catalog.py)."""

from __future__ import annotations

import pytest

from lakeforge import catalog
from lakeforge.config import PipelineConfig, Settings
from lakeforge.errors import ConfigError

URI = "postgresql+psycopg2://lakeforge_catalog:pw-s3cret@127.0.0.1:5433/lakeforge_catalog"


def _settings(**kw) -> Settings:
    return Settings(s3_endpoint="http://127.0.0.1:8333", s3_access_key_id="AKID", s3_secret_access_key="sk-s3cret",
                    catalog_uri=URI, s3_bucket="lake-b", **kw)


def test_table_names_derive_from_the_pipeline_and_unknown_layers_are_refused():
    assert catalog.table_name("bbc_news", "curated") == "bbc_news.curated"
    assert catalog.spark_table("bbc_news", "raw", _settings()) == "lakeforge.bbc_news.raw"
    with pytest.raises(ConfigError, match="unknown lake table 'gold'"):
        catalog.table_name("bbc_news", "gold")


def test_schemas_follow_the_yaml_roles_and_extra_fields():
    news = PipelineConfig.load("bbc_news")
    raw = catalog.iceberg_schema(news, "raw")
    assert [f.name for f in raw.fields][: len(news.fields)] == [f.name for f in news.fields]
    assert str(raw.find_field(news.field("label").name).field_type) == "string"  # names arrive as names
    curated = catalog.iceberg_schema(news, "curated")
    assert str(curated.find_field("label").field_type) == "long"  # curated holds the index into `labels`
    features = catalog.iceberg_schema(news, "features")
    assert str(features.find_field("input_ids").field_type) == "list<int>"
    assert len({f.field_id for f in features.fields}) == len(features.fields)


def test_partitioned_by_the_grain_of_the_pipeline():
    daily = PipelineConfig.load("movie_reviews")
    hourly = daily.model_copy(update={"partition": "hourly"})
    for pipeline, transform in ((daily, "day"), (hourly, "hour")):
        for layer in catalog.LAYERS:
            schema = catalog.iceberg_schema(pipeline, layer)
            (field,) = catalog.partition_spec(pipeline, layer, schema).fields
            assert str(field.transform) == transform
            assert schema.find_field(field.source_id).name == catalog.partition_column(pipeline, layer)


def test_spark_settings_keep_secrets_out_of_the_launch_config():
    s = _settings()
    conf = catalog.spark_conf(s)
    assert conf["spark.sql.catalog.lakeforge.uri"] == "jdbc:postgresql://127.0.0.1:5433/lakeforge_catalog"
    assert conf["spark.sql.catalog.lakeforge.jdbc.user"] == "lakeforge_catalog"
    assert conf["spark.sql.catalog.lakeforge.warehouse"] == "s3://lake-b/warehouse"
    assert not any("s3cret" in v for v in conf.values())
    secrets = catalog.spark_secrets(s)
    assert secrets["spark.sql.catalog.lakeforge.jdbc.password"] == "pw-s3cret"
    assert secrets["spark.sql.catalog.lakeforge.s3.secret-access-key"] == "sk-s3cret"


def test_the_catalog_needs_postgres_over_tcp_or_a_local_sqlite_file():
    with pytest.raises(ConfigError, match="TCP host"):
        catalog.jdbc_parts("postgresql+psycopg2://u:@/lakeforge_catalog?host=/tmp/sock")
    with pytest.raises(ConfigError, match="PostgreSQL.*'mysql"):
        catalog.jdbc_parts("mysql+pymysql://u:pw@127.0.0.1/lakeforge_catalog")
    # a LocalLake's catalog: one SQLite file, no user, no password
    assert catalog.jdbc_parts("sqlite:////tmp/lake/catalog.db") == ("jdbc:sqlite:/tmp/lake/catalog.db", "", "")


def test_a_local_warehouse_needs_no_s3_settings():
    s = Settings(catalog_uri="sqlite:////tmp/lake/catalog.db", catalog_name="local_x",
                 warehouse="file:///tmp/lake/warehouse")
    assert not catalog.on_s3(s) and catalog.on_s3(_settings())
    conf = catalog.spark_conf(s)
    assert conf["spark.sql.catalog.local_x.warehouse"] == "file:///tmp/lake/warehouse"
    assert not any(".s3." in k or k.endswith("io-impl") for k in conf)  # Iceberg's default FileIO: local files
    assert catalog.spark_secrets(s) == {"spark.sql.catalog.local_x.jdbc.password": ""}
