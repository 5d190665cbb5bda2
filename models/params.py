"""Checks shared by the families' ``validate_params``: parameters that carry binary data as base64."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from models.errors import ParamError


def base64_param(data: Any, name: str, what: str) -> bytes:
    """The bytes of a base64 string parameter; :class:`ParamError` naming ``name`` and ``what`` it holds."""
    if not isinstance(data, str):
        raise ParamError(f"'{name}' must be a base64 string of {what}")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ParamError(f"'{name}' is not valid base64: {e}") from e
