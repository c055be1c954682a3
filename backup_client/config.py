# -*- test-case-name: tests.test_config -*-
"""
The client's settings: command-line options first, then environment
variables, then the config file, then defaults -- so that everyday
commands need no flags.

The config file is C{config.toml} in the config folder (C{--config-dir},
C{BACKUP_CONFIG_DIR}, default C{~/.config/backup-client}), for example::

    server = "backup.example.org:40445"
    ca = "ca.pem"                  # relative to this file's folder
    user = "alice"
    password_file = "password"     # its first line
    exclude = ["*.tmp", "node_modules/"]
    exclude_file = ["ignore"]
    exclude_caches = true
"""

import os

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CONFIG_NAME = "config.toml"

#: Each key the file may hold, and its type; paths are resolved relative
#: to the file's folder.
KEYS = {
    "server": str,
    "ca": str,
    "user": str,
    "password_file": str,
    "exclude": list,
    "exclude_file": list,
    "exclude_caches": bool,
}
PATHS = {"ca", "password_file", "exclude_file"}


class ConfigError(Exception):
    """
    The config file cannot be read or holds something it should not.
    """


def configDir(configured, environ=os.environ):
    """
    @return: the client's config folder.
    """
    if configured:
        return configured
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "backup-client")


def loadConfig(directory):
    """
    @return: the settings of C{directory/config.toml} (paths made
        absolute), or C{{}} if there is none.
    @raise ConfigError: it cannot be read or parsed, or has an unknown key
        or a value of the wrong type.
    """
    path = os.path.join(directory, CONFIG_NAME)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(KEYS)})")
    base = os.path.dirname(os.path.abspath(path))
    settings = {}
    for key, value in data.items():
        kind = KEYS[key]
        if not isinstance(value, kind) or (
            kind is list and not all(isinstance(v, str) for v in value)
        ):
            what = "a list of strings" if kind is list else f"a {kind.__name__}"
            raise ConfigError(f"{path}: {key} must be {what}")
        if key in PATHS:
            value = (
                [os.path.join(base, os.path.expanduser(v)) for v in value]
                if kind is list
                else os.path.join(base, os.path.expanduser(value))
            )
        settings[key] = value
    return settings


def resolve(args, environ, config, defaultServer):
    """
    Fill C{args}' connection settings and excludes by precedence: option,
    environment, config file, default.
    """
    args.server = args.server or environ.get("BACKUP_SERVER") or config.get("server")
    args.server = args.server or defaultServer
    args.ca = args.ca or environ.get("BACKUP_CA") or config.get("ca")
    args.user = args.user or environ.get("BACKUP_USER") or config.get("user")
    if not args.password_file and environ.get("BACKUP_PASSWORD") is None:
        args.password_file = config.get("password_file")
    if hasattr(args, "exclude"):
        args.exclude = config.get("exclude", []) + args.exclude
        args.exclude_file = config.get("exclude_file", []) + args.exclude_file
        args.exclude_caches = args.exclude_caches or config.get("exclude_caches", False)
