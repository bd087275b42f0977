"""Teacher loading and the built-in student families."""
