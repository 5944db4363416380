"""twistd dropin: ``twistd rumpus-secure``."""

from twisted.application.service import ServiceMaker

rumpusSecure = ServiceMaker(
    "rumpus-secure",
    "rumpus_secure.tap",
    "Secure FTP/FTPS/HTTPS file server.",
    "rumpus-secure",
)
