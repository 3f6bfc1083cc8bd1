"""Shared infrastructure: the embedded stack, the bus, the database, object storage, the CLI."""
