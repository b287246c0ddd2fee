"""Container health check: exit 0 when the service answers GET /healthz on localhost.

Used by the images' HEALTHCHECK (docker and compose); Kubernetes probes call the same
endpoint with httpGet instead. Standard library only.

    python healthcheck.py DEFAULT_PORT [PATH]

The port is COLMENA_HEALTH_PORT when set (the task server and thinker read it too), else
DEFAULT_PORT.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    if not 2 <= len(sys.argv) <= 3:
        print(f"usage: {sys.argv[0]} DEFAULT_PORT [PATH]", file=sys.stderr)
        return 2
    port = os.environ.get("COLMENA_HEALTH_PORT") or sys.argv[1]
    path = sys.argv[2] if len(sys.argv) == 3 else "/healthz"
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"{url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
