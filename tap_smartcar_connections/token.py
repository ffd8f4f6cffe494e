"""API v3's access token: client credentials exchanged at `v3_token_url`, shared by the run.

Written here rather than with the SDK's `OAuthAuthenticator`, which posts with plain `requests`
(redirects followed, no whole-response deadline), retries nothing, and puts the token
endpoint's whole body into its error.
"""

from __future__ import annotations

import re
import typing as t

import msgspec
import requests

from tap_smartcar_connections.errors import BrokenBody
from tap_smartcar_connections.jsonapi import describe_response
from tap_smartcar_connections.requester import Endpoint

if t.TYPE_CHECKING:
    from tap_smartcar_connections.streams import Run

TOKEN_ADVICE = {
    400: "check client_id and v3_token_url",
    401: "check client_id and client_secret (Smartcar Dashboard > API Credentials)",
    403: "check client_id and client_secret, and that the application may use API v3",
}
TOKEN_MARGIN_SECONDS = 300.0
"""A token is renewed this long (at most a tenth of its lifetime) before it expires."""
MAX_TOKEN_SECONDS = 86_400
_TOKEN_CHARACTERS = re.compile(r"[\x21-\x7e]{1,4096}", re.ASCII)


class _Token(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int | float


_TOKEN_DECODER = msgspec.json.Decoder(_Token)


class AccessToken:
    """One client-credentials access token, fetched when needed and renewed before it ends."""

    def __init__(self, run: Run, user_agent: str) -> None:
        """No token yet: the first request fetches one."""
        self.run = run
        self.user_agent = user_agent
        self.value = ""
        self.renew_at = 0.0
        settings = run.settings
        self.endpoint = Endpoint(
            "v3_token_url",
            settings.v3_token_url,
            describe_response,
            TOKEN_ADVICE,
            refused="Smartcar's token endpoint refused the client credentials: {summary}. "
            "To fix: {advice}",
            default_advice="check v3_token_url, client_id and client_secret",
        )

    def get(self) -> str:
        """The current token, fetched when there is none or it is about to end."""
        if not self.value or self.run.clock.monotonic() >= self.renew_at:
            self.run.requester.call(self._fetch, self.endpoint)
        return self.value

    def discard(self, value: str) -> None:
        """Forget `value` (refused with a 401), so that the next `get` fetches a new one."""
        if self.value == value:
            self.value = ""

    def _fetch(self) -> None:
        """One attempt at a token (see `Requester.call` for the retries).

        Raises:
            BrokenBody: If the answer is not a usable Bearer token with a lifetime.
        """
        settings = self.run.settings
        request = requests.Request(
            "POST",
            settings.v3_token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": settings.client_id,
                "client_secret": settings.client_secret,
            },
            headers={
                "Accept": "application/json",
                "Accept-Encoding": "gzip",
                "User-Agent": self.user_agent,
            },
        ).prepare()
        response = self.run.requester.send(request, self.endpoint)
        try:
            token = _TOKEN_DECODER.decode(response.content)
        except (msgspec.DecodeError, RecursionError) as exc:
            msg = f"a token endpoint answer that is not the expected token JSON ({exc})"
            raise BrokenBody(msg) from exc
        if not _TOKEN_CHARACTERS.fullmatch(token.access_token):
            msg = "a token endpoint answer with an access_token that is not a token"
            raise BrokenBody(msg)
        self.run.redactor.add(token.access_token)
        if token.token_type.lower() != "bearer" or not token.expires_in >= 1:
            msg = (
                f"a token endpoint answer with token_type {token.token_type!r} and expires_in "
                # Quoted: redaction takes any "Bearer <word>" for a credential.
                f"{token.expires_in}, not a token of type 'Bearer' with a lifetime"
            )
            raise BrokenBody(msg)
        lifetime = int(min(token.expires_in, MAX_TOKEN_SECONDS))
        self.value = token.access_token
        margin = min(TOKEN_MARGIN_SECONDS, lifetime / 10)
        self.renew_at = self.run.clock.monotonic() + lifetime - margin
        self.run.requester.logger.info(
            "Fetched a Smartcar API v3 access token (valid %d s)", lifetime
        )
