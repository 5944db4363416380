"""
Wiring ACME into an assembled server: the one call L{rumpus_secure.tap} makes.

L{install_acme} adds the L{AcmeService}, hands the HTTP listener the
in-memory challenge answers (C{server.acme_responder}, read by
L{rumpus_secure.web.acme}) and, with ``--metrics``, adds the ACME gauges.
The certificate files the listeners serve were chosen earlier, in
L{rumpus_secure.acme.store.prepare_files}, before the TLS source was built.
"""

from __future__ import annotations

from typing import Any

from rumpus_secure.acme.challenges import ChallengeResponder
from rumpus_secure.acme.client import AcmeSettings
from rumpus_secure.acme.service import AcmeService
from rumpus_secure.acme.store import AcmeStore


def install_acme(server: Any, top: Any, reactor: Any) -> AcmeService | None:
    """
    Add the ACME service to C{top} when ``--acme-directory`` is set.
    """
    config = server.config
    if config.acme_directory is None:
        return None
    store = AcmeStore(config.data_dir / "acme")
    responder = ChallengeResponder()
    server.acme_responder = responder
    reloader = top.getServiceNamed("tls-reload")

    def install() -> bool:
        return bool(reloader.reload("acme"))

    acme = AcmeService(
        AcmeSettings.from_config(config), store, responder, clock=reactor,
        run_in_thread=server.run_in_thread, install=install,
        audit=server.audit,
    )
    acme.setServiceParent(top)
    reloader.signal_hooks.append(acme.retry_soon)
    server.acme = acme
    if getattr(server, "metrics", None) is not None:
        watch_acme(server.metrics, acme)
    return acme


def watch_acme(metrics: Any, acme: AcmeService) -> None:
    """
    ACME gauges in the server's metrics registry.

    ``rumpus_acme_failures`` is the number of failed attempts since the last
    success (alert when it stays above 0); ``rumpus_acme_self_signed`` is 1
    while the first certificate has not arrived.
    """
    from prometheus_client import Gauge

    failures = Gauge("rumpus_acme_failures", "Failed ACME attempts since the last"
                     " success (0: renewal is fine).", registry=metrics.registry)
    failures.set_function(lambda: acme.failures)
    placeholder = Gauge("rumpus_acme_self_signed", "1 while the server serves a"
                        " self-signed certificate waiting for its first ACME"
                        " certificate.", registry=metrics.registry)
    placeholder.set_function(lambda: 1 if acme.serving_placeholder else 0)
    metrics.acme_failures = failures
