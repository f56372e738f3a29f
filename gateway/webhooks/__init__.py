"""Signed webhook delivery to the upstream app from a durable outbox."""
