"""The ``colmena`` command: one subcommand per service.

    colmena taskserver --methods pkg.mod:METHODS --parsl-config pkg.mod:config
    colmena thinker --thinker-factory pkg.mod:make_thinker --client-id thinker-1
    colmena gateway --port 8000
    colmena launch

Every flag can also be given as a ``COLMENA_*`` environment variable (``--broker-url`` is
``COLMENA_BROKER_URL``). Settings are validated before anything starts; a wrong setting, an
unreachable broker or code that cannot be imported ends the command with a message, not a
traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliSubCommand,
    SettingsConfigDict,
    SettingsError,
    get_subcommand,
)

from .common import ServiceConfigError, ServiceSettings
from .gateway.settings import GatewaySettings
from .launcher import LaunchSettings
from .taskserver.settings import TaskServerSettings
from .thinker.settings import ThinkerSettings

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


class Colmena(BaseSettings):
    """Colmena services: run a campaign's task servers, thinkers and gateway on a RabbitMQ broker.

    Every flag can also be set with a COLMENA_* environment variable (--broker-url is
    COLMENA_BROKER_URL). Run 'colmena SUBCOMMAND --help' for the flags of each service.
    """

    model_config = SettingsConfigDict(
        cli_prog_name="colmena", cli_kebab_case=True, cli_implicit_flags=True
    )

    taskserver: CliSubCommand[TaskServerSettings]
    thinker: CliSubCommand[ThinkerSettings]
    gateway: CliSubCommand[GatewaySettings]
    launch: CliSubCommand[LaunchSettings]


def _explain(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"][1:] or item["loc"])
        flag = "--" + field.replace("_", "-")
        env = "COLMENA_" + field.upper()
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {flag} ({env}): {message}")
    return "\n".join(lines)


def run_service(settings: ServiceSettings) -> int:
    """Start the service that ``settings`` configures and return its exit code."""
    settings.configure_logging()
    if isinstance(settings, TaskServerSettings):
        from .taskserver.service import TaskServerService

        return TaskServerService(settings).run()
    if isinstance(settings, ThinkerSettings):
        from .thinker.service import ThinkerService

        return ThinkerService(settings).run()
    if isinstance(settings, GatewaySettings):
        from .gateway.app import serve

        return serve(settings)
    if isinstance(settings, LaunchSettings):
        from .launcher import launch

        return launch(settings)
    raise ServiceConfigError(f"Unknown service settings {type(settings).__name__}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``colmena`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        args = ["--help"]
    try:
        command = CliApp.run(Colmena, cli_args=args, cli_exit_on_error=True)
        settings = get_subcommand(command, is_required=True)
    except ValidationError as error:
        print(f"colmena: invalid settings:\n{_explain(error)}", file=sys.stderr)
        return EXIT_CONFIG
    except SettingsError as error:
        print(f"colmena: invalid settings: {error}", file=sys.stderr)
        return EXIT_CONFIG
    assert isinstance(settings, ServiceSettings)
    try:
        return run_service(settings)
    except ServiceConfigError as error:
        logging.getLogger("colmena").error("%s", error)
        print(f"colmena: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (ConnectionError, TimeoutError) as error:
        print(f"colmena: the broker is not reachable: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
