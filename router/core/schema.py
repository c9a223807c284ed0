"""The config base every schema builds on: strict structs, decoding that names the bad key, the error."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

T = TypeVar("T")
Seconds = Annotated[float, Meta(gt=0)]
Unit = Annotated[float, Meta(ge=0.0, le=1.0)]


class ConfigError(Exception):
    """An invalid configuration; the message names the file, the key and the reason."""

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}")
        self.path, self.key, self.reason = str(path), key, reason


class Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    pass


def decode_struct(raw: Any, kind: type[T], path: Path | str, prefix: str = "") -> T:
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).partition(" - at `$")
        key = prefix + where.rstrip("`")
        raise ConfigError(path, key.lstrip(".") or "(root)", reason) from exc
