"""``python -m smoothgrad_cli`` and the ``smoothgrad`` command."""

from . import interrupt


def run() -> None:
    # First of all, before typer, rich or torch load: a kill during start-up stops like
    # Ctrl-C (exit 130 with the summary), not by the signal.
    interrupt.install()
    from .cli import main

    main()


if __name__ == "__main__":
    run()
