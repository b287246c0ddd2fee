"""The thinker service: run a user's thinker against the broker with a stable client ID."""
