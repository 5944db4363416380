"""
The public HTTPS origin, shared by the HTTPS site (its Origin check) and the
plain-HTTP listener (its redirect target).

It lives apart from both so that neither imports the other: before, the web
app imported the redirect module for this one function, and the redirect
module imported the site for ``--http-redirect off``, a cycle through three
modules (``tests/test_web_imports.py`` keeps the import graph acyclic).
"""

from __future__ import annotations

import ipaddress

from rumpus_secure.config import ServerConfig


def https_origin(config: ServerConfig) -> bytes:
    """
    The HTTPS origin clients are sent to, e.g. ``https://files.example.com:8443``.
    """
    host = config.public_host
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    port = config.https_port
    suffix = "" if port in (None, 443) else f":{port}"
    return f"https://{host}{suffix}".encode("ascii")
