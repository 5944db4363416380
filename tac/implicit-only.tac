# twistd -ny tac/implicit-only.tac
#
# High-security mode: implicit FTPS only. The plain FTP port answers with a
# 421 that names the FTPS port and hangs up; no password is ever sent there.
from twisted.application import service

from rumpus_secure.tap import makeService

options = {
    "data-dir": "./rumpus-data",
    "ftp-security": "implicit-only",
    "ftp": "tcp:2121",
    "ftps": "tcp:9990",
}

application = service.Application("rumpus-secure")
makeService(options).setServiceParent(application)
