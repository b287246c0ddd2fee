"""Helpers for testing Colmena applications and transports: finding or starting services."""
