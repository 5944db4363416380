# twistd -ny tac/rumpus-secure.tac
#
# The same server as `twistd rumpus-secure`, built by the same function.
# Edit the mapping below (same option names as the command line and the TOML
# file) or point "config" at a TOML file.
from twisted.application import service

from rumpus_secure.tap import makeService

options = {
    "config": None,  # e.g. "/etc/rumpus-secure.toml"
    "data-dir": "./rumpus-data",
}

application = service.Application("rumpus-secure")
makeService(options).setServiceParent(application)
