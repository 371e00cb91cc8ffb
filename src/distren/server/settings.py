"""`distren serve`'s settings from flags, a TOML `--config` file and `DISTREN_*` environment
variables, in that order of precedence, over the defaults of `ServerConfig` (config.py, where
every setting is defined); `--print-config` and the README's settings table.

pydantic-settings merges the sources and pydantic checks every value against its field; a
problem is one line naming the setting, its flag and where the value came from.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Any

from ..errors import DistrenError
from .config import ServerConfig, _extra, describe_default, user_settings

ENV_PREFIX = "DISTREN_"


def flag(name: str) -> str:
    """The setting's flag: the name with dashes (`peers`: `--peer`, given once per peer)."""
    return "--peer" if name == "peers" else "--" + name.replace("_", "-")


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _plain_type(annotation: Any) -> Any:
    """`int | None` -> int."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _help(name: str) -> str:
    f = ServerConfig.model_fields[name]
    text = (f.description or "").replace("`", "").replace("%", "%%")
    default = describe_default(name).replace("`", "")
    default = "required" if default == "(required)" else f"default: {default}"
    return f"{text} ({default}; ${env_var(name)})"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every setting users set; a flag not given leaves no attribute (the TOML file,
    the environment or the default decide)."""
    for name, f in user_settings().items():
        kind = _plain_type(f.annotation)
        metavar = _extra(f)["metavar"] or {int: "N", float: "SECONDS", Path: "PATH"}.get(kind, "VALUE")
        if name == "peers":
            parser.add_argument(flag(name), dest=name, action="append", metavar=metavar,
                                default=argparse.SUPPRESS, help=_help(name))
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag(name), dest=name, action="append", metavar=metavar,
                                default=argparse.SUPPRESS, help=_help(name))
        elif kind is bool:
            parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=_help(name))
        else:
            parser.add_argument(flag(name), dest=name, metavar=metavar, default=argparse.SUPPRESS, help=_help(name))


def load(args: argparse.Namespace, config_file: Path | None) -> ServerConfig:
    """The effective settings: flags (`args`) > `config_file` (TOML) > `DISTREN_*` > defaults."""
    import os
    import tomllib

    from pydantic import ValidationError
    from pydantic_settings import BaseSettings, SettingsConfigDict
    from pydantic_settings import EnvSettingsSource, InitSettingsSource, SettingsError

    from ..federation.peers import parse_peer

    flags = {name: getattr(args, name) for name in user_settings() if hasattr(args, name)}
    if "peers" in flags:
        flags["peers"] = dict(parse_peer(text) for text in flags["peers"])
    toml: dict = {}
    if config_file is not None:
        try:
            toml = tomllib.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise DistrenError(f"cannot read config {config_file}: {exc}") from None
        _no_internal(toml, str(config_file))
    env = {name: os.environ[env_var(name)] for name in user_settings() if os.environ.get(env_var(name))}

    class Settings(BaseSettings, ServerConfig):
        """ServerConfig's fields read from flags, the TOML file and the environment."""

        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid",
                                          frozen=True)

        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            return (init_settings, InitSettingsSource(settings_cls, toml),
                    _only_user_settings(EnvSettingsSource(settings_cls)))

    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        raise DistrenError(_one_line(exc, flags, toml, env, config_file)) from None
    except SettingsError as exc:   # a table in the environment that is not JSON
        raise DistrenError(f"{exc}: a table such as {env_var('peers')} is a JSON object, "
                           f"e.g. '{{\"beta\": \"http://10.0.0.2:7780\"}}'") from None
    return ServerConfig.model_construct(**dict(settings))


def _only_user_settings(source):
    """The environment source without settings users do not set."""
    def read() -> dict:
        values = source()
        return {k: v for k, v in values.items() if k in user_settings()}
    return read


def _no_internal(values: dict, where: str) -> None:
    for key in values:
        if key in ServerConfig.model_fields and key not in user_settings():
            raise DistrenError(f"{where}: {key} is not a setting")


# pydantic's words for the common errors, shorter and in the units users give
_MESSAGES = {
    "greater_than": "must be > {gt}", "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}", "less_than_equal": "must be <= {le}",
    "int_parsing": "must be a whole number", "int_from_float": "must be a whole number",
    "int_type": "must be a whole number", "float_parsing": "must be a number", "float_type": "must be a number",
    "finite_number": "must be a finite number", "dict_type": "must be a table of NAME = \"URL\"",
    "string_type": "must be a string", "path_type": "must be a path", "missing": "is required",
    "extra_forbidden": "is not a setting",
}


def _one_line(exc, flags: dict, toml: dict, env: dict, config_file: Path | None) -> str:
    """The first error as one line: the setting, its flag, where its value came from, what is wrong."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    name = loc[0] if loc else None
    message = _MESSAGES.get(err["type"], err["msg"]).format(**{k: _num(v) for k, v in (err.get("ctx") or {}).items()})
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if name is None:
        return f"bad settings: {message}"
    if err["type"] == "missing":
        return (f"setting {name} is required: give {flag(name)}, {name} = ... in --config, or {env_var(name)}")
    if name in flags:
        where = f"from {flag(name)}"
    elif name in toml:
        where = f"in {config_file}"
    elif name in env:
        where = f"from ${env_var(name)}"
    else:
        where = "by default"
    if err["type"] == "extra_forbidden":
        return f"{name} {where}: not a setting (see distren serve --help)"
    value = f" = {err['input']!r}" if len(loc) == 1 else f".{'.'.join(loc[1:])} = {err['input']!r}"
    return f"setting {name}{value} {where}: {message}"


def _num(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# -- --print-config ------------------------------------------------------------------------------
def to_toml(config: ServerConfig) -> str:
    """The settings as a TOML file that `--config` reads back to the same settings; settings
    that are not set (None) are comments."""
    import tomli_w

    values: dict[str, Any] = {}
    unset = []
    for name in user_settings():
        value = getattr(config, name)
        if name == "slots" and config.slots_auto:
            value = "auto"
        if value is None:
            unset.append(f"# {name}: not set ({describe_default(name).replace('`', '')})")
        elif isinstance(value, Path):
            values[name] = str(value)
        else:
            values[name] = value
    head = "# distren serve: the effective settings (flags > --config > DISTREN_* > defaults)\n"
    return head + "\n".join(unset) + ("\n" if unset else "") + tomli_w.dumps(values)


# -- the README's table --------------------------------------------------------------------------
def markdown_table() -> str:
    """The README's settings table: every setting, its flag, environment variable, default and meaning."""
    rows = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
    rows.append("| `--config FILE` | | none | a TOML file with any of these settings (keys like `max_failures`) "
                "and a `[peers]` table |")
    rows.append("| `--print-config` | | | print the effective settings as TOML (a file for `--config`) and exit |")
    for name, f in user_settings().items():
        shown = flag(name) + (" NAME=URL" if name == "peers" else "")
        rows.append(f"| `{shown}` | `{env_var(name)}` | {describe_default(name)} | {f.description} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--markdown"]:
        print("usage: python -m distren.server.settings --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
