"""Credentials out of every message: camera URLs carry passwords (``rtsp://user:pass@host``,
``?user=...&pwd=...``, GStreamer's ``user-pw=...``), and messages go to terminals, journals and
reports. Every source name and message that can hold a source's spec goes through
:func:`redact`."""

from __future__ import annotations

import re

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s\"']*)@")
_SECRET_KEYS = (
    r"user|username|usr|login|pwd|pass|passwd|password|token|key|apikey|api_key|auth|secret|sig"
    r"|signature"
)
_QUERY = re.compile(rf"(?P<key>[?&;](?:{_SECRET_KEYS}))=(?P<value>[^&#\s\"']*)", re.IGNORECASE)
_GST_PROPS = re.compile(
    r"(?P<key>\b(?:user-id|user-pw|proxy-id|proxy-pw|password|passwd)\s*=\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s!]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with URL credentials, secret query values and GStreamer password properties
    replaced by ``***`` (user names too: they are half of a credential)."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", str(text))
    text = _QUERY.sub(lambda m: f"{m['key']}={MASK}", text)
    return _GST_PROPS.sub(lambda m: f"{m['key']}{MASK}", text)
