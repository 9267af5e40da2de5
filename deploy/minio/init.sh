#!/bin/sh
# One-shot MinIO setup for the lakeforge deployment (the `minio-init` service, image minio/mc).
# Idempotent: creates the lake bucket, a policy that can read and write that bucket only, and the
# lake writer identity ($LAKEFORGE_S3_ACCESS_KEY_ID) that lakeforge, Spark and MLflow use.
# The MinIO root credentials stay here and in the minio service; no other service gets them.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${LAKEFORGE_S3_BUCKET:?}" "${LAKEFORGE_S3_ACCESS_KEY_ID:?}" "${LAKEFORGE_S3_SECRET_ACCESS_KEY:?}"
POLICY=lakeforge-rw

mc alias set lake http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing "lake/$LAKEFORGE_S3_BUCKET"

cat > /tmp/policy.json <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow",
     "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::$LAKEFORGE_S3_BUCKET"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::$LAKEFORGE_S3_BUCKET/*"]}
  ]
}
JSON
mc admin policy create lake "$POLICY" /tmp/policy.json

# `user add` on an existing user updates its secret, so a changed .env takes effect on rerun.
mc admin user add lake "$LAKEFORGE_S3_ACCESS_KEY_ID" "$LAKEFORGE_S3_SECRET_ACCESS_KEY"
if ! mc admin user info lake "$LAKEFORGE_S3_ACCESS_KEY_ID" | grep -q "$POLICY"; then
  mc admin policy attach lake "$POLICY" --user "$LAKEFORGE_S3_ACCESS_KEY_ID"
fi
echo "bucket $LAKEFORGE_S3_BUCKET and writer identity ready"
