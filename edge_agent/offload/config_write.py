"""Writing a calibrated ``score`` and ``threshold`` into an agent config's ``[offload]``.

``edge-agent calibrate --write CONFIG`` uses it, so the threshold the agent runs with is
the one calibration chose (the daemon reads ``[offload]`` at start: restart it after).

:func:`set_offload_keys` is a pure text edit that keeps everything else in the file as
it was (comments, order, other sections): in the ``[offload]`` table each key's line is
replaced (its trailing comment kept) or, when absent, added at the end of the table; a
file without the table gets one appended. The result is read back with ``tomllib`` and
must hold exactly the values written, or :class:`CalibrationError` says to edit by hand
(a config that spells the table as dotted keys or an inline table, say).
:func:`write_offload_keys` writes the edit atomically (tempfile, fsync, ``os.replace``).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .calibrate import CalibrationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

__all__ = ["set_offload_keys", "toml_value", "write_offload_keys"]

TomlScalar = str | float | int | bool
_HEADER = re.compile(r"^\s*\[\s*offload\s*\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")


def toml_value(value: TomlScalar) -> str:
    """``value`` as a TOML literal; floats with ``repr`` so they read back exactly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def set_offload_keys(text: str, values: Mapping[str, TomlScalar], source: str = "config") -> str:
    """``text`` with ``values`` set in its ``[offload]`` table; see the module docstring."""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CalibrationError(f"{source}: not valid TOML ({exc}); fix it first") from exc
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    header = next((i for i, line in enumerate(lines) if _HEADER.match(line)), None)
    if header is None:
        block = ["[offload]\n", *(f"{k} = {toml_value(v)}\n" for k, v in values.items())]
        gap = ["\n"] if lines and lines[-1].strip() else []
        lines += gap + block
    else:
        end = next(
            (i for i in range(header + 1, len(lines)) if _ANY_HEADER.match(lines[i])), len(lines)
        )
        missing: list[str] = []
        for key, value in values.items():
            pattern = re.compile(rf"^(\s*){re.escape(key)}\s*=")
            index = next((i for i in range(header + 1, end) if pattern.match(lines[i])), None)
            if index is None:
                missing.append(f"{key} = {toml_value(value)}\n")
                continue
            indent = pattern.match(lines[index]).group(1)  # type: ignore[union-attr]
            comment = _comment(lines[index].split("=", 1)[1])
            tail = f"  {comment}" if comment else ""
            lines[index] = f"{indent}{key} = {toml_value(value)}{tail}\n"
        last = end
        while last > header + 1 and not lines[last - 1].strip():
            last -= 1  # add after the table's last line, before blank lines
        lines[last:last] = missing
    result = "".join(lines)
    _check_read_back(result, values, source)
    return result


def write_offload_keys(path: Path, values: Mapping[str, TomlScalar]) -> None:
    """Edit the config file at ``path`` in place (atomically); it must exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such config file to write to") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot read ({exc})") from exc
    updated = set_offload_keys(text, values, str(path))
    target = path.resolve()
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(updated)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, target.stat().st_mode & 0o7777)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _comment(value_part: str) -> str:
    """The ``# ...`` comment after a one-line TOML value, or ``""``."""
    quote: str | None = None
    escaped = False
    for index, char in enumerate(value_part):
        if quote == '"' and escaped:
            escaped = False
        elif quote == '"' and char == "\\":
            escaped = True
        elif quote is not None:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            return value_part[index:].rstrip("\r\n").rstrip()
    return ""


def _check_read_back(text: str, values: Mapping[str, TomlScalar], source: str) -> None:
    try:
        table = tomllib.loads(text).get("offload")
    except tomllib.TOMLDecodeError:
        table = None
    ok = isinstance(table, dict) and all(
        table.get(key) == value and type(table.get(key)) is type(value)
        for key, value in values.items()
    )
    if not ok:
        shown = ", ".join(f"{k} = {toml_value(v)}" for k, v in values.items())
        raise CalibrationError(
            f"{source}: could not set {shown} in its [offload] table automatically; "
            "edit the file by hand"
        )
