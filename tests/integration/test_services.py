"""The supervisor against real processes: health, idempotent `up`, S3 identities, Kafka and MLflow."""

from __future__ import annotations

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

pytestmark = pytest.mark.integration


def test_every_service_is_healthy(services):
    rows = services.status()
    assert {r["service"] for r in rows} >= {"postgres", "s3", "kafka", "mlflow", "airflow-api-server",
                                            "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                                            "model-server"}
    unhealthy = [r for r in rows if not r["healthy"]]
    assert not unhealthy, unhealthy


def test_up_is_idempotent(services):
    before = {r["service"]: r["pid"] for r in services.status()}
    services.up(progress=lambda *_: None)
    after = {r["service"]: r["pid"] for r in services.status()}
    assert before == after  # nothing restarted


def test_endpoints_recorded_for_other_commands(services, settings):
    assert settings.kafka_bootstrap and settings.s3_endpoint and settings.mlflow_uri
    assert settings.s3_access_key_id and settings.s3_secret_access_key
    mode = (services.state.home / "secrets.json").stat().st_mode & 0o777
    assert mode == 0o600


def _client(endpoint, key, secret):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def test_s3_identities_are_enforced(services, settings):
    keys = services.state.secrets["s3"]
    writer = _client(settings.s3_endpoint, keys["writer"]["access_key_id"], keys["writer"]["secret_access_key"])
    reader = _client(settings.s3_endpoint, keys["reader"]["access_key_id"], keys["reader"]["secret_access_key"])
    writer.put_object(Bucket=settings.s3_bucket, Key="tests/identity.txt", Body=b"hello")
    assert reader.get_object(Bucket=settings.s3_bucket, Key="tests/identity.txt")["Body"].read() == b"hello"
    with pytest.raises(ClientError) as denied:
        reader.put_object(Bucket=settings.s3_bucket, Key="tests/nope.txt", Body=b"x")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    stranger = _client(settings.s3_endpoint, "nobody", "wrongsecretwrongsecret")
    with pytest.raises(ClientError) as unknown:
        stranger.list_objects_v2(Bucket=settings.s3_bucket)
    assert unknown.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_kafka_roundtrip_with_kafka_python(services, settings):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from lakeforge.services.kafka import create_topic

    topic = "lakeforge.test.roundtrip"
    create_topic(settings.kafka_bootstrap, topic, 1)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    base = 1_700_000_000_000
    for i in range(100):
        producer.send(topic, value=f"m{i}".encode(), timestamp_ms=base + i * 1000)
    producer.flush()
    producer.close()
    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    end = consumer.end_offsets([tp])[tp]
    # offsets_for_times answers by the record's CreateTime (the Tansu broker answered by append time)
    hit = consumer.offsets_for_times({tp: base + 50 * 1000})[tp]
    consumer.assign([tp])
    consumer.seek(tp, hit.offset)
    rec = next(iter(consumer.poll(timeout_ms=5000).get(tp, [])))
    consumer.close()
    assert end % 100 == 0 and rec.value == b"m50" and rec.timestamp == base + 50_000


def test_mlflow_server_uses_postgres_and_s3(services, settings):
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("lakeforge-smoke") or client.get_experiment(
        client.create_experiment("lakeforge-smoke"))
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        mlflow.log_metric("x", 1.0)
        mlflow.log_text("hello", "hello.txt")
    assert client.get_run(run.info.run_id).data.metrics["x"] == 1.0
    # the artifact went through the server into the S3 bucket
    s3 = settings.s3_client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix="mlflow-artifacts/").get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/hello.txt") for k in keys), keys[:10]


def test_model_server_answers_503_or_prediction(services, settings):
    resp = httpx.get(f"{settings.serve_url}/healthz", timeout=10)
    assert resp.status_code == 200 and resp.json()["status"] == "ok"
    bad = httpx.post(f"{settings.serve_url}/v1/predict", json={"texts": []}, timeout=10)
    assert bad.status_code == 422
