"""
Accounts: the store, argon2id password hashing and the twisted.cred checker.

The names most code needs are re-exported here; the modules hold the rest.
"""

from rumpus_secure.accounts.checker import (
    ArgonChecker,
    LockedAccountError,
    verify_thread_pool,
)
from rumpus_secure.accounts.hashing import hash_password, verify_password
from rumpus_secure.accounts.store import (
    ALL_PERMISSIONS,
    Account,
    AccountError,
    IAccountStore,
    SQLiteAccountStore,
)

__all__ = [
    "ALL_PERMISSIONS",
    "Account",
    "AccountError",
    "ArgonChecker",
    "IAccountStore",
    "LockedAccountError",
    "SQLiteAccountStore",
    "hash_password",
    "verify_password",
    "verify_thread_pool",
]
