"""Example Colmena applications (see the README)."""
