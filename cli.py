"""
The command line, once for every script: `--key=value` or `--key value` overrides of a config dataclass,
and one-line errors for bad input (UserError) instead of tracebacks.
"""
import difflib
import errno
import math
import os
import signal
import sys
from dataclasses import field, fields


class UserError(Exception):
    """A problem with the user's input: printed as one line, no traceback."""


def interrupted_at_start(signum, frame):
    sys.stderr.write("interrupted\n")
    os._exit(130)  # nothing is written before main() runs: there is nothing to finish


def quiet_start():
    """Called first by every script, before its slow imports (torch takes a second): a Ctrl-C then is one line and
    exit status 130, as it is later; run_cli gives main() Python's KeyboardInterrupt back. A process started with
    SIGINT ignored (nohup, `cmd &`) keeps ignoring it."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupted_at_start)


def run_cli(main, interrupted="interrupted"):
    """Run a script's main(): a UserError becomes one line on stderr and exit status 1; Ctrl-C one line (the
    `interrupted` text) and exit status 130, the shell's code for it."""
    if signal.getsignal(signal.SIGINT) is interrupted_at_start:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except UserError as e:
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


def fmt_time(seconds):
    """A duration as 1h05m or 3m07s."""
    seconds = max(int(seconds), 0)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def option(default, *, low=None, high=None, above=None, below=None, choices=None, items=None):
    """A config field and its allowed values, declared together; parse_args checks every value it sets.
    low / high: at least / at most; above / below: strictly more / less; choices: the allowed strings;
    items=int or float: a comma-separated list whose every item is such a number within the bounds."""
    rule = {key: value for key, value in dict(low=low, high=high, above=above, below=below, choices=choices,
                                              items=items).items() if value is not None}
    return field(default=default, metadata={"rule": rule})


def describe(rule):
    """The allowed values in words: 'at least 1', 'at least 0 and less than 1', 'auto, cpu or cuda'."""
    if "choices" in rule:
        names = list(rule["choices"])
        return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    bounds = [f"{word} {rule[key]:g}" for key, word in (("low", "at least"), ("above", "more than"),
                                                        ("high", "at most"), ("below", "less than")) if key in rule]
    text = " and ".join(bounds)
    if "items" in rule:
        kind = "whole numbers" if rule["items"] is int else "numbers"
        return f"{kind} separated by commas" + (f", each {text}" if text else "")
    return text


def list_items(name, text, kind):
    """The numbers of a comma-separated option ('' gives none), or a one-line UserError."""
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise UserError(f"--{name} takes {what} separated by commas (e.g. --{name}=1,2,3), not {text!r}") from None


def check_value(name, value, rule):
    """Nothing if value is allowed by rule; otherwise a UserError naming the option, the value and the rule."""
    if "choices" in rule:
        if value not in rule["choices"]:
            raise UserError(f"--{name} {value}: choose {describe(rule)}")
        return
    values = list_items(name, value, rule["items"]) if "items" in rule else [value]
    for v in values:
        if ("low" in rule and v < rule["low"]) or ("high" in rule and v > rule["high"]) or \
                ("above" in rule and v <= rule["above"]) or ("below" in rule and v >= rule["below"]):
            raise UserError(f"--{name} {value}: must be {describe(rule)}")


def parse_value(field, text):
    if field.type in (bool, "bool"):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--{field.name} expects true or false, got '{text}'")
    kind = {"int": int, "float": float, "str": str}.get(field.type, field.type)
    try:
        value = kind(text)
    except ValueError:
        raise UserError(f"--{field.name} expects {kind.__name__}, got '{text}'") from None
    if kind is float and not math.isfinite(value):
        raise UserError(f"--{field.name} expects a finite number, got '{text}'")
    return value


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
        check_value(key, getattr(config, key), field.metadata.get("rule", {}))
        given.add(key)
        i += 1
    return given


def usage(config):
    lines = [f"  --{f.name}={getattr(config, f.name)!r}" + (f"  ({describe(f.metadata['rule'])})"
                                                             if f.metadata.get("rule") else "") for f in fields(config)]
    return "options (default values):\n" + "\n".join(lines)
