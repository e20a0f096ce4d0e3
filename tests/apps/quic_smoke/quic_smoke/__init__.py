"""FLQ transport smoke app."""
