"""
Certificates from an ACME certificate authority (RFC 8555), built in.

With ``--acme-directory`` the server obtains its certificate for
``--public-host`` and ``--acme-names`` itself and renews it, validating each
name by HTTP-01 on its own ``--http`` listener.  The protocol is spoken by
the ``acme`` library that certbot uses (with ``josepy`` for JWS): no JWS is
written here.  That library is blocking (``requests``), so every exchange
with the CA runs in a thread; the schedule, the installation of the new
certificate and the audit trail live on the reactor thread.

- L{rumpus_secure.acme.store}: ``DATA-DIR/acme/`` (account key, certificate,
  key, status; files 0600, directory 0700), atomic installation.
- L{rumpus_secure.acme.schedule}: when to renew, how long to back off (pure).
- L{rumpus_secure.acme.challenges}: pending HTTP-01 answers, in memory.
- L{rumpus_secure.acme.client}: one issuance, blocking, in a thread.
- L{rumpus_secure.acme.service}: the service that ties them together, and
  L{install_acme}, the one call L{rumpus_secure.tap} makes.
"""
