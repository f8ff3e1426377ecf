"""The `infogrowth` commands: curate, ingest, export, replay, status, the demo, the worker."""
