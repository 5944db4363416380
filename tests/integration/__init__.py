"""
End-to-end tests: the real server (``twistd -n rumpus-secure``) in a
subprocess, on loopback, driven by real clients (ftplib, curl, lftp,
openssl).  Run them alone with ``pytest -m integration``.
"""
