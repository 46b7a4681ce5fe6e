"""Keep API keys out of every message that leaves the client: exception texts, log records (and
so Prefect's log rows and state messages), rejection reasons.

An OpenAI-compatible gateway may echo the key it refused in its error body ("Incorrect API key
provided: sk-..."); that body becomes the exception's text. `register_secret(key)` (done by the
chat client) makes `redact` replace the key, and any `Authorization`/`Bearer` value, with a
mask, and installs a log-record factory that redacts every record of the process, its
arguments and its traceback text included, before any handler sees it.
"""
from __future__ import annotations

import logging
import re
import threading

MASK = "***"
_BEARER = re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?|bearer\s+)[^\s\"',;}]+")
_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def register_secret(secret: str) -> None:
    """Mask `secret` from now on in `redact` and in every log record of this process."""
    if not secret or len(secret) < 4:  # masking a 1-3 character "key" would mangle ordinary text
        return
    with _lock:
        _secrets.add(secret)
    _install_log_redaction()


def redact(text: str) -> str:
    """`text` with every registered secret and every Authorization/Bearer value masked."""
    if not isinstance(text, str) or not text:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return _BEARER.sub(lambda m: m.group(1) + MASK, text)


def _install_log_redaction() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    make_record = logging.getLogRecordFactory()

    def redacting_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is left to its handler
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            cleaned = redact(text)
            if cleaned != text:
                record.exc_text = cleaned  # handlers print exc_text instead of formatting exc_info again
        return record

    logging.setLogRecordFactory(redacting_record)
