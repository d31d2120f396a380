"""The project's error classes and the one handler that every program's `main()` goes through.

Owns: `ProjectError`, the base of every error a user can act on (a bad path, an unreadable file, a run
that stopped), `UsageError` for an option that cannot work, and `run_main`, which turns either into one
line on stderr and an exit code. Each module keeps its own subclass (`DataError`, `RunError`, ...) so
that a message says where it came from. Imports nothing from the project, so every module may use it.
"""

import sys

EXIT_INPUT = 1                          # an input cannot be used, or the run stopped (one line)
EXIT_USAGE = 2                          # an option cannot work (one line)


class ProjectError(ValueError):
    """Something the user can fix, said as one line that names the file or option and what to do."""


class UsageError(ProjectError):
    """An option or argument that cannot work; exits with code 2 like argparse's own usage errors."""


def run_main(body, argv=None, cleanup=None) -> int:
    """Call `body(argv)` and map the project's errors to one stderr line and an exit code.

    `body` returns None or an exit code; `cleanup` (if given) runs whatever happened. Anything that is
    not a ProjectError is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        code = body(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ProjectError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
    finally:
        if cleanup is not None:
            cleanup()
    return 0 if code is None else int(code)
