"""
The command line, once for every script: `--key=value` or `--key value` overrides of a config dataclass,
and one-line errors for bad input (UserError) instead of tracebacks.
"""
import difflib
import sys
from dataclasses import fields


class UserError(Exception):
    """A problem with the user's input: printed as one line, no traceback."""


def run_cli(main):
    """Run a script's main(): a UserError becomes one line on stderr and exit status 1."""
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")


def parse_value(field, text):
    if field.type in (bool, "bool"):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--{field.name} expects true or false, got '{text}'")
    kind = {"int": int, "float": float, "str": str}.get(field.type, field.type)
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"--{field.name} expects {kind.__name__}, got '{text}'") from None


def parse_args(argv, config, doc=None):
    """Apply `--key=value` / `--key value` (`--flag` alone sets a bool) to a dataclass config; returns the
    set of keys given. Unknown keys and wrongly typed values are a UserError; -h / --help prints the options."""
    if "-h" in argv or "--help" in argv:
        print((doc or "").strip() + "\n\n" + usage(config))
        sys.exit(0)
    by_name = {f.name: f for f in fields(config)}
    given = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument '{arg}': options look like --key=value")
        key, eq, value = arg[2:].partition("=")
        if key not in by_name:
            close = difflib.get_close_matches(key, by_name, n=1)
            hint = f"; did you mean --{close[0]}?" if close else ""
            raise UserError(f"unknown option --{key}{hint} (see --help)")
        field = by_name[key]
        if not eq:
            is_bool = field.type in (bool, "bool")
            if is_bool and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
                value = "true"
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise UserError(f"--{key} needs a value")
        setattr(config, key, parse_value(field, value))
        given.add(key)
        i += 1
    return given


def usage(config):
    lines = [f"  --{f.name}={getattr(config, f.name)!r}" for f in fields(config)]
    return "options (default values):\n" + "\n".join(lines)
