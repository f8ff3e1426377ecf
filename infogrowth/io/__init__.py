"""Wire formats and I/O: Avro records, Kafka and S3 helpers, sample files, the consumer API."""
