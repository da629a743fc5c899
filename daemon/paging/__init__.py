"""Pages: the outbox (journaled before sent), escalation's timer, and one module per channel."""
