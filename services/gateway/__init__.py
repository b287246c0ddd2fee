"""The gateway: a FastAPI app that exposes one campaign to REST, WebSocket and SSE clients.

``app`` builds the app and runs it with uvicorn; ``api/`` holds the routes (one module per
resource under ``api/routes``) and their dependencies; ``service`` does the work behind
them over ``broker`` (the gateway's own connection) and the campaign monitor; ``models``
are the JSON bodies; ``settings`` the one settings class; ``static`` the dashboard.
"""
