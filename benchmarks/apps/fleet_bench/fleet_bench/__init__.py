"""FLQ transport benchmark app."""
