"""Officers' approval keys."""
