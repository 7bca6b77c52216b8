"""AWS plumbing: boto3 clients, bucket-to-queue wiring and S3 backfill."""
