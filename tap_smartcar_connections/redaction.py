"""Redaction: the one place every text passes before it is cut, cleaned or logged.

A server or proxy may echo a request's headers or form body into an error, and an error line is
cut to a few hundred characters: cut first, and a secret split by the cut would no longer match
as a whole. So `Redactor.clean` redacts first, and removes not only every registered secret in
each of its encodings but any run of `MIN_RUN` characters of one.
"""

from __future__ import annotations

import base64
import logging
import re
import traceback
import typing as t
from urllib.parse import quote, quote_plus

REDACTED = "<redacted>"
MIN_RUN = 8
"""The shortest piece of a secret that is searched for, whole or in part.

A bare secret shorter than this is not searched for at all: redacting "t" would garble every
line. Its `default:` and base64 forms still are, and so is any `Basic`/`Bearer` value.
"""
_AUTH_VALUE = re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def one_line(value: t.Any, limit: int) -> str:
    """One line of at most `limit` printable characters of `value`, or '' if not a string.

    Control characters (a forged second log line) become spaces and whitespace collapses. Only
    for text already redacted, or the tap's own: server text goes through `Redactor.clean`.
    """
    if not isinstance(value, str):
        return ""
    text = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Redactor:
    """The secrets of one run, and how to take them out of any text.

    Secrets travel with the run: the configured credentials at the start, and each v3 access
    token when it is fetched.
    """

    def __init__(self, secrets: t.Iterable[str] = ()) -> None:
        """Start with `secrets` (the configured credentials)."""
        self._whole: set[str] = set()
        self._runs: set[str] = set()
        self._patterns: tuple[re.Pattern[str], re.Pattern[str]] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Redact `secret` from now on: itself, its URL-encoded and Basic-auth forms, any run of it.

        The client secret goes out in a form body (a server quoting it back shows it
        URL-encoded); the management token in `Authorization: Basic base64(default:<token>)`.
        """
        if not secret.strip():
            return
        basic = f"default:{secret}"
        self._whole.update({basic, base64.b64encode(basic.encode()).decode()})
        if len(secret) >= MIN_RUN:
            forms = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret)}
            self._whole.update(forms)
            self._runs.update(
                form[i : i + MIN_RUN] for form in forms for i in range(len(form) - MIN_RUN + 1)
            )
        self._patterns = None

    def redact(self, text: str) -> str:
        """`text` without any secret, any `MIN_RUN`-character run of one, or any auth value.

        Whole forms go first, longest first; then every stretch of `text` covered by runs of a
        secret (a secret cut short, or split by a server's own truncation) becomes one
        `REDACTED`; last, any `Basic …`/`Bearer …` credential, whoever's it is.
        """
        for secret in sorted(self._whole, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        if self._runs:
            text = self._redact_runs(text)
        return _AUTH_VALUE.sub(rf"\1 {REDACTED}", text)

    def _redact_runs(self, text: str) -> str:
        """Replace each stretch of `text` made of overlapping secret runs with `REDACTED`.

        A plain search first: it rejects a clean text several times faster than the lookahead
        that finds every overlapping run, and nearly every log line is clean.
        """
        if self._patterns is None:
            alternatives = "|".join(re.escape(run) for run in sorted(self._runs))
            self._patterns = re.compile(alternatives), re.compile(f"(?=({alternatives}))")
        any_run, every_run = self._patterns
        if not any_run.search(text):
            return text
        starts = [match.start() for match in every_run.finditer(text)]
        covered = [False] * len(text)
        for start in starts:
            covered[start : start + MIN_RUN] = [True] * MIN_RUN
        pieces: list[str] = []
        for index, char in enumerate(text):
            if not covered[index]:
                pieces.append(char)
            elif index == 0 or not covered[index - 1]:
                pieces.append(REDACTED)
        return "".join(pieces)

    def clean(self, value: t.Any, limit: int) -> str:
        """Server text made safe to show: redacted first, then one line of at most `limit`."""
        if not isinstance(value, str):
            return ""
        return one_line(self.redact(value), limit)


class _RedactingFactory:
    """A log record factory that redacts every record before any handler or formatter sees it.

    A traceback is folded into the message, redacted, because formatters render `exc_info`
    from the live exception.
    """

    def __init__(self, wrapped: t.Callable[..., logging.LogRecord], redactor: Redactor) -> None:
        self.wrapped = wrapped
        self.redactor = redactor

    def __call__(self, *args: t.Any, **kwargs: t.Any) -> logging.LogRecord:
        record = self.wrapped(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            return record
        folded = bool(record.exc_info and record.exc_info[1] is not None)
        if folded:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()  # type: ignore[misc]
            record.exc_info = None
        clean = self.redactor.redact(message)
        if folded or clean != message:
            record.msg, record.args = clean, ()
        return record


def install_log_redaction(redactor: Redactor) -> None:
    """Redact every log record this process creates with `redactor`, whatever logger it goes to.

    A record factory sees each record once, before any handler or formatter (Meltano's
    structured one included). Installing again (a second tap in one process) replaces the
    redactor rather than stacking factories.
    """
    current = logging.getLogRecordFactory()
    wrapped = current.wrapped if isinstance(current, _RedactingFactory) else current
    logging.setLogRecordFactory(_RedactingFactory(wrapped, redactor))


def redact_line(text: str) -> str:
    """`text` redacted by the run's redactor, if a run installed one (the final error line)."""
    factory = logging.getLogRecordFactory()
    return factory.redactor.redact(text) if isinstance(factory, _RedactingFactory) else text
