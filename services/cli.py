"""The ``colmena`` command: one subcommand per service, and the operator's commands.

    colmena taskserver --methods pkg.mod:METHODS --parsl-config pkg.mod:config
    colmena thinker --thinker-factory pkg.mod:make_thinker --client-id thinker-1
    colmena gateway --port 8000
    colmena launch
    colmena status | results | dead-letters | report FILE

Every flag can also be given as a ``COLMENA_*`` environment variable (``--broker-url`` is
``COLMENA_BROKER_URL``). Settings are validated, and the broker is tried once, before
anything starts; a wrong setting, a broker that refuses the login or does not answer, or
code that cannot be imported ends the command with one line saying so, not a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliSubCommand,
    SettingsConfigDict,
    SettingsError,
    get_subcommand,
)

from .admin import DeadLettersSettings, ReportSettings, ResultsSettings, StatusSettings
from .common import BrokerRefusedError, ServiceConfigError, ServiceSettings, check_broker
from .gateway.settings import GatewaySettings
from .launcher import LaunchSettings
from .record import RecordError
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

    taskserver: CliSubCommand[TaskServerSettings] = Field(
        description="Serve methods: run the tasks of the campaign through Parsl"
    )
    thinker: CliSubCommand[ThinkerSettings] = Field(
        description="Run a thinker: the agents that decide what to compute next"
    )
    gateway: CliSubCommand[GatewaySettings] = Field(
        description="Serve the REST/WebSocket API and the dashboard"
    )
    launch: CliSubCommand[LaunchSettings] = Field(
        description="Run a broker, a task server, a thinker and the gateway on this machine"
    )
    status: CliSubCommand[StatusSettings] = Field(
        description="Show task servers, methods, queues, tasks in flight and dead letters"
    )
    results: CliSubCommand[ResultsSettings] = Field(
        description="Follow the results of a client or of the whole campaign"
    )
    dead_letters: CliSubCommand[DeadLettersSettings] = Field(
        description="List, requeue or purge the messages the campaign could not deliver"
    )
    report: CliSubCommand[ReportSettings] = Field(
        description="Draw a campaign's utilisation and task Gantt chart from its results file"
    )


def package_version() -> str:
    """The installed version of colmena-core."""
    try:
        return version("colmena-core")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _explain(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"][1:] or item["loc"])
        flag = "--" + field.replace("_", "-")
        env = "COLMENA_" + field.upper()
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {flag} ({env}): {message}")
    return "\n".join(lines)


def run_service(settings: BaseSettings) -> int:
    """Start the service that ``settings`` configures and return its exit code."""
    if isinstance(settings, ReportSettings):
        return settings.run()
    assert isinstance(settings, ServiceSettings)
    admin = isinstance(settings, StatusSettings | ResultsSettings | DeadLettersSettings)
    if admin:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True)
        from .common import quiet_libraries

        quiet_libraries(settings.log_level)
    else:
        settings.configure_logging()
    if isinstance(settings, GatewaySettings):
        # The gateway waits for an absent broker (answering 503 meanwhile), but a broker
        # that refuses its login will not change its mind
        try:
            check_broker(settings.broker_url, min(settings.connect_timeout, 5.0))
        except ConnectionError:
            pass
    elif not isinstance(settings, LaunchSettings):
        check_broker(settings.broker_url, settings.connect_timeout)
    if isinstance(settings, StatusSettings | ResultsSettings | DeadLettersSettings):
        return settings.run()
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
    if args[0] in ("--version", "-V"):
        print(f"colmena {package_version()}")
        return 0
    try:
        command = CliApp.run(Colmena, cli_args=args, cli_exit_on_error=True)
        settings = get_subcommand(command, is_required=True)
    except ValidationError as error:
        print(f"colmena: invalid settings:\n{_explain(error)}", file=sys.stderr)
        return EXIT_CONFIG
    except SettingsError as error:
        print(f"colmena: invalid settings: {error}", file=sys.stderr)
        return EXIT_CONFIG
    assert isinstance(settings, BaseSettings)
    try:
        return run_service(settings)
    except BrokerRefusedError as error:
        print(f"colmena: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (ServiceConfigError, RecordError) as error:
        print(f"colmena: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (ConnectionError, TimeoutError) as error:
        message = str(error)
        if "not reachable" not in message:
            message = f"the broker is not reachable: {message}"
        print(f"colmena: {message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:  # Ctrl-C before a service set up its own handling
        return 130


if __name__ == "__main__":
    sys.exit(main())
