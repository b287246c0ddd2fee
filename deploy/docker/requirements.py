"""Print the requirements of one extra of a pyproject.toml, one per line, for pip -r.

The image build installs the dependencies in a layer of their own, before the source is
copied in, so that changing the source does not reinstall them. Self-references such as
``colmena-core[parsl,redis]`` inside an extra are expanded. Standard library only: it runs
on the bare base image.

    python3 requirements.py pyproject.toml services > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?(.*)$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path, extra: str) -> list[str]:
    """The requirements of the project plus those of ``extra``, self-references expanded."""
    project = tomllib.loads(pyproject.read_text())["project"]
    own_name = _normalise(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    lines: list[str] = []
    seen_extras: set[str] = set()

    def add(specs: list[str]) -> None:
        for spec in specs:
            match = _NAME.match(spec)
            if match and _normalise(match.group(1)) == own_name:
                for name in (match.group(2) or "").split(","):
                    name = name.strip()
                    if name and name not in seen_extras:
                        seen_extras.add(name)
                        add(optional[name])
            elif spec not in lines:
                lines.append(spec)

    add(list(project.get("dependencies", [])))
    seen_extras.add(extra)
    add(optional[extra])
    return lines


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} PYPROJECT EXTRA")
    print("\n".join(requirements(Path(sys.argv[1]), sys.argv[2])))


if __name__ == "__main__":
    main()
