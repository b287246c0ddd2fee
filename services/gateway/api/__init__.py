"""The gateway's HTTP API, versioned under ``/api/v1``: one module of routes per resource."""
