"""Colmena services: a task server, a thinker worker and a gateway that share one broker.

Each service lives in its own sub-package (``taskserver``, ``thinker``, ``gateway``) with one
settings class read once from flags or ``COLMENA_*`` environment variables; ``cli`` is the
``colmena`` command that starts them.
"""
