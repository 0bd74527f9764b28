"""``python -m smoothgrad_cli`` and the ``smoothgrad`` command."""

import sys

from . import interrupt


def run() -> None:
    # First of all, before typer, rich or torch load: a kill during start-up stops like
    # Ctrl-C (exit 130), not by the signal.
    interrupt.install()
    try:
        try:
            from .cli import main
        except KeyboardInterrupt:  # stopped while the command line itself was still loading
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        main()
    except SystemExit as exc:
        if interrupt.stopping():  # the exit code must survive the interpreter's shutdown
            interrupt.exit_after_stop(exc.code)
        raise
    finally:
        # Python puts the default handlers back while it shuts down (which takes a while
        # with torch loaded): a second kill after a stop must not end the process by its
        # signal then, with the summary printed and 130 due.
        interrupt.ignore_if_stopping()


if __name__ == "__main__":
    run()
