"""Turn Hydra's and OmegaConf's reports of a bad command line into one line.

Composition errors (an unknown group option, a key the schema lacks, a value of the wrong
type, override syntax) are the user's to fix: they get one `error:` line and exit 2, like
every `UserError`. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import re
from dataclasses import fields, is_dataclass

from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from blockprof.common.errors import UserError

_NOT_FOUND = re.compile(r"Could not find '([^']+)'")
_OPTIONS = re.compile(r"Available options in '([^']+)':\n((?:\t[^\n]*\n?)*)")


def _schema_keys(obj_type) -> str:
    if is_dataclass(obj_type):
        return ", ".join(f.name for f in fields(obj_type) if not f.name.startswith("_"))
    return ""


def _omegaconf_line(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    msg = str(getattr(exc, "msg", None) or exc).strip().splitlines()[0]
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and key:
        known = _schema_keys(getattr(exc, "object_type", None))
        return f"unknown config key '{key}'" + (f" (known here: {known})" if known else "")
    return f"{key}: {msg}" if key else msg


def _yaml_error(exc: BaseException) -> str | None:
    """A config file that is not YAML (a user's file under `--config-dir`, or an edited
    packaged one): name the file and the place, which Hydra's report leaves out."""
    import yaml
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
            what = "; ".join(str(p) for p in (exc.context, exc.problem) if p)
            return f"cannot read config file {where}: {what}"
        if isinstance(exc, yaml.YAMLError):
            return f"cannot read a config file: {str(exc).strip().splitlines()[0]}"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def one_line_user_error(exc: BaseException) -> str | None:
    """The one-line message for a user error, or None for a bug. Control characters a
    message quotes from a damaged file (a NUL byte in a CSV) are shown escaped, never sent
    raw to the terminal."""
    line = _one_line(exc)
    return None if line is None else printable(line)


def printable(line: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


def _one_line(exc: BaseException) -> str | None:
    if isinstance(exc, UserError):  # blockprof's own words first (an insight file's YAML, ...)
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    yaml_line = _yaml_error(exc)
    if yaml_line is not None:
        return yaml_line
    if isinstance(exc, MissingConfigException):
        text = str(exc)
        found, options = _NOT_FOUND.search(text), _OPTIONS.search(text)
        if found and "/" in found.group(1):
            group, option = found.group(1).rsplit("/", 1)
            choices = ", ".join(o.strip() for o in options.group(2).split()) if options else ""
            return f"unknown {group} '{option}'" + (f" (choose from: {choices})" if choices else "")
        return text.strip().splitlines()[0]
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override: {str(exc).strip().splitlines()[0]}"
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        return _omegaconf_line(cause)
    if isinstance(exc, (ValidationError, ConfigKeyError)):
        return _omegaconf_line(exc)
    if isinstance(exc, HydraException):
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        return "; ".join(lines[:2]) if lines else type(exc).__name__
    if isinstance(exc, OmegaConfBaseException):
        return _omegaconf_line(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        # the file system refused (read-only or full disk, no permission, a file where a
        # folder should be): the user's to fix, not a bug
        return f"cannot write {exc.filename}: {exc.strerror or exc}"
    return None
