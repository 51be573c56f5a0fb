"""
One line for bad input instead of a traceback, and the shell's exit codes: 1 for an error, 130 for Ctrl-C.
"""
import errno
import os
import sys


class UserError(ValueError):
    """A problem with the user's input: printed as one line, no traceback. The core raises plain ValueErrors for
    bad values it meets; at the command line both are one line."""


def run_cli(main, interrupted="interrupted"):
    """Run a script's main(): a UserError (or the core's ValueError) becomes one line on stderr and exit status 1;
    Ctrl-C one line (the `interrupted` text) and exit status 130, the shell's code for it."""
    try:
        return main()
    except ValueError as e:
        if os.environ.get("LAB_TRACEBACK"):  # a developer's view of where it came from
            raise
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly (caught before OSError, its parent)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as e:  # read-only, not a directory, disk full...: the path and the reason, not a traceback
        if e.filename is None and e.errno != errno.ENOSPC:
            raise
        where = f"{e.filename}: " if e.filename else ""
        advice = ": free some space, or write elsewhere" if e.errno == errno.ENOSPC else ""
        sys.exit(f"error: {where}{e.strerror or e}{advice}")
