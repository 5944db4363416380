"""
One certificate issuance, blocking: run it in a thread.

L{obtain_certificate} registers (or finds) the account, orders a
certificate for the configured names, answers each authorization's HTTP-01
challenge through the in-memory L{ChallengeResponder}, finalizes with a
CSR for a new EC P-256 key and returns the full chain and that key.

Everything that can go wrong comes out as one L{AcmeFailure} with a line
for a person, the CA's problem type, and what the CA said about waiting
(C{Retry-After}, read from the last refused response through a
C{requests} response hook: the library's errors do not carry headers).

An authorization for a name we were not configured for is never answered:
the order is abandoned with an error.  That cannot happen with a CA that
follows RFC 8555 (the order lists exactly the CSR's names), so it is a
guard against a confused or hostile directory, not a feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import josepy as jose
import requests
from acme import challenges, crypto_util, errors, messages
from acme.client import ClientNetwork, ClientV2
from cryptography.hazmat.primitives import serialization

from rumpus_secure import __version__ as _version
from rumpus_secure.acme.challenges import ChallengeResponder
from rumpus_secure.acme.schedule import parse_retry_after
from rumpus_secure.acme.store import AcmeStore, new_key_pem

#: How long one issuance may take, validation and finalization included.
ISSUANCE_TIMEOUT = timedelta(seconds=120)
#: Seconds for one HTTP request to the CA.
NETWORK_TIMEOUT = 30


@dataclass(frozen=True)
class AcmeSettings:
    """
    What the client needs from the configuration.
    """

    directory: str
    names: tuple[str, ...]
    email: str | None = None
    ca_bundle: Path | None = None
    timeout: timedelta = ISSUANCE_TIMEOUT

    @classmethod
    def from_config(cls, config: Any) -> AcmeSettings:
        names = [config.public_host.lower().rstrip(".")]
        names += [name for name in config.acme_names if name not in names]
        return cls(directory=config.acme_directory, names=tuple(names),
                   email=config.acme_email, ca_bundle=config.acme_ca_bundle)


@dataclass(frozen=True)
class Issued:
    """
    A certificate the CA issued: the full chain and its key, both PEM.
    """

    fullchain_pem: bytes
    key_pem: bytes
    account: str


@dataclass
class AcmeFailure(Exception):
    """
    An issuance failed.

    :ivar reason: one line for a person.
    :ivar problem: the ACME problem type without its URN prefix
        (``rateLimited``, ``unauthorized``, ...), or a word of ours
        (``network``, ``timeout``, ``refused-name``).
    :ivar retry_after: seconds the CA asked us to wait, if it did.
    """

    reason: str
    problem: str = "error"
    retry_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.reason

    @property
    def rate_limited(self) -> bool:
        return self.problem == "rateLimited"


class _RetryAfter:
    """
    Remembers the C{Retry-After} of the last response if it was a refusal.

    A success clears it: a refusal that the library retried past (a
    ``badNonce``) says nothing about the failure that ends the attempt, and
    the C{Retry-After} of a successful poll only paces that poll.
    """

    def __init__(self) -> None:
        self.value: str | None = None

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.value = None if response.ok else response.headers.get("Retry-After")


def obtain_certificate(settings: AcmeSettings, store: AcmeStore,
                       responder: ChallengeResponder) -> Issued:
    """
    Blocking: get a new certificate for C{settings.names}.

    :raises AcmeFailure: for every failure, with the reason.
    """
    retry_after = _RetryAfter()
    try:
        return _obtain(settings, store, responder, retry_after)
    except AcmeFailure as failure:
        if failure.retry_after is None:
            failure.retry_after = parse_retry_after(retry_after.value, datetime.now(UTC))
        raise
    except messages.Error as e:
        raise AcmeFailure(
            f"the CA refused: {e.detail or e.title or e.typ}", e.code or "error",
            parse_retry_after(retry_after.value, datetime.now(UTC)),
        ) from e
    except errors.ValidationError as e:
        raise AcmeFailure(_validation_reason(e), "validation",
                          parse_retry_after(retry_after.value, datetime.now(UTC))) from e
    except errors.TimeoutError as e:
        raise AcmeFailure(
            f"the CA did not finish within {int(settings.timeout.total_seconds())} s",
            "timeout") from e
    except requests.RequestException as e:
        raise AcmeFailure(f"cannot reach the ACME directory: {_short(e)}", "network") from e
    except errors.Error as e:
        raise AcmeFailure(f"ACME error: {_short(e)}", "error") from e


def _obtain(settings: AcmeSettings, store: AcmeStore, responder: ChallengeResponder,
            retry_after: _RetryAfter) -> Issued:
    account_key = jose.JWKEC(key=serialization.load_pem_private_key(
        store.account_key_pem(), password=None))
    verify: Any = str(settings.ca_bundle) if settings.ca_bundle is not None else True
    net = ClientNetwork(account_key, alg=jose.ES256, verify_ssl=verify,
                        user_agent=f"rumpus-secure/{_version} acme-python",
                        timeout=NETWORK_TIMEOUT)
    net.session.hooks["response"].append(retry_after)
    try:
        client = ClientV2(ClientV2.get_directory(settings.directory, net), net)
        account = _account(client, settings)
        key_pem = new_key_pem()
        csr = crypto_util.make_csr(key_pem, list(settings.names))
        order = client.new_order(csr)
        tokens: list[str] = []
        try:
            for authorization in order.authorizations:
                token = _answer(client, authorization, settings, account_key, responder)
                if token is not None:
                    tokens.append(token)
            deadline = datetime.now() + settings.timeout
            order = client.poll_and_finalize(order, deadline)
        finally:
            for token in tokens:
                responder.remove(token)
        return Issued(order.fullchain_pem.encode("ascii"), key_pem, account)
    finally:
        net.session.close()


def _account(client: ClientV2, settings: AcmeSettings) -> str:
    """
    Register the account key, or find the account it already has.

    Registering an existing key answers with the account's URL (RFC 8555
    section 7.3.1), which is all the client needs, so no account state is
    kept beside the key: a CA that lost the account (Pebble restarted)
    simply gets a new registration.
    """
    contact = (f"mailto:{settings.email}",) if settings.email else ()
    registration = messages.NewRegistration.from_data(
        terms_of_service_agreed=True)
    if contact:
        registration = registration.update(contact=contact)
    try:
        return str(client.new_account(registration).uri)
    except errors.ConflictError as e:
        location = e.location
        client.net.account = messages.RegistrationResource(
            uri=location, body=messages.Registration())
        return str(location)


def _answer(client: ClientV2, authorization: messages.AuthorizationResource,
            settings: AcmeSettings, account_key: jose.JWK,
            responder: ChallengeResponder) -> str | None:
    """
    Answer one authorization's HTTP-01 challenge; the token, or L{None} if
    the authorization is already valid.
    """
    body = authorization.body
    name = str(body.identifier.value).lower()
    if body.identifier.typ != messages.IDENTIFIER_FQDN or name not in settings.names:
        raise AcmeFailure(
            f"the CA asked to validate {name!r}, which is not one of the"
            f" configured names ({', '.join(settings.names)}); not answered",
            "refused-name")
    if body.status == messages.STATUS_VALID:
        return None
    for challenge in body.challenges:
        if isinstance(challenge.chall, challenges.HTTP01):
            response, validation = challenge.response_and_validation(account_key)
            token = challenge.chall.encode("token")
            responder.add(name, token, validation)
            client.answer_challenge(challenge, response)
            return token
    raise AcmeFailure(f"the CA offers no HTTP-01 challenge for {name}", "no-http-01")


def _validation_reason(error: errors.ValidationError) -> str:
    parts = []
    for authorization in error.failed_authzrs:
        for challenge in authorization.body.challenges:
            if challenge.error is not None:
                problem = challenge.error
                parts.append(f"{authorization.body.identifier.value}: "
                             f"{problem.detail or problem.typ}")
    return "validation failed: " + ("; ".join(parts) or "no reason given")


def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:limit]


__all__: Sequence[str] = [
    "AcmeFailure", "AcmeSettings", "Issued", "obtain_certificate",
]
