"""Defaults from an optional TOML file; environment variables and flags win over it.

Where: $SECURECHAT_CONFIG, else $XDG_CONFIG_HOME/securechat/config.toml, else
~/.config/securechat/config.toml. Keys at the top level apply to every
command; a [serve], [join] or [send] table applies to that command only:

    certs = "~/securechat/certs"
    downloads = "~/Downloads/securechat"
    port = 7443
    [join]
    name = "alice"

Precedence (click's): command-line flag, then environment variable
(SECURECHAT_CERTS, SECURECHAT_DOWNLOADS, SECURECHAT_PORT), then this file,
then the built-in default.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from securechat.errors import UsageError

COMMANDS = ("serve", "join", "send", "fingerprint", "revoke", "gen-certs")
_KIND = {str: "text in quotes", int: "a whole number"}
_KEYS = {"certs": str, "downloads": str, "port": int, "name": str, "host": str, "max-file-size": str}


def config_path() -> Path:
    if os.environ.get("SECURECHAT_CONFIG"):
        return Path(os.environ["SECURECHAT_CONFIG"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "securechat" / "config.toml"


def _checked(table: dict[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        if key in COMMANDS:
            continue
        if key not in _KEYS:
            raise UsageError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(_KEYS))})")
        if not isinstance(value, _KEYS[key]) or isinstance(value, bool):
            raise UsageError(f"{where}: {key} must be {_KIND[_KEYS[key]]}, not {value!r}")
        out[key.replace("-", "_")] = str(Path(value).expanduser()) if key in ("certs", "downloads") else value
    return out


def default_map() -> dict[str, dict[str, Any]]:
    """click's default_map: per command, the settings the file gives it."""
    path = config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from exc
    common = _checked(data, str(path))
    result = {}
    for command in COMMANDS:
        section = data.get(command, {})
        if not isinstance(section, dict):
            raise UsageError(f"{path}: [{command}] must be a table")
        result[command] = {**common, **_checked(section, f"{path} [{command}]")}
    return result
