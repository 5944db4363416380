#!/usr/bin/env python3
"""
What two-factor login and share links cost per request (issue #15).

Prints, on a real SQLite store:

1. a visitor's link lookup (SHA-256 of the token + one indexed query, a
   connection opened per call as the store does) with LINKS links stored,
   and the owner check that follows it (one account read);
2. taking a use (one conditional UPDATE, WAL, synchronous=NORMAL);
3. checking a TOTP code (three HMAC-SHA1 over the window) and opening the
   sealed secret (AES-256-GCM);
4. an FTPS app-password login's verification against one argon2id hash
   (the id in the password names the row) versus trying every app password
   of an account with APPS of them, as a design without ids would.

    python bench/share_links.py
    python bench/share_links.py --links 100000 --rounds 2000

Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rumpus_secure.accounts.hashing import hash_password, verify_password  # noqa: E402
from rumpus_secure.accounts.secretbox import SecretBox  # noqa: E402
from rumpus_secure.accounts.store import SQLiteAccountStore  # noqa: E402
from rumpus_secure.accounts.totp import code_at, matching_step, new_secret  # noqa: E402
from rumpus_secure.shares import SQLiteShareStore  # noqa: E402


def timed(function, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def show(label: str, samples: list[float]) -> None:
    samples.sort()
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(f"{label:<44} median {statistics.median(samples):9.1f} us   "
          f"p99 {p99:9.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--links", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--apps", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        accounts = SQLiteAccountStore(root / "accounts.sqlite3", root / "files")
        accounts.add("alice", "a long enough password")
        shares = SQLiteShareStore(root / "accounts.sqlite3")
        far = time.time() + 86400
        tokens = []
        for i in range(options.links):
            _, token = shares.create(f"u{i // 100}", "download", f"/f{i}", far, None, None,
                                     None, "")
            tokens.append(token)
        probe = tokens[len(tokens) // 2]
        share, _ = shares.find(probe)
        print(f"{options.links} links stored; {options.rounds} rounds each")
        show("link lookup by token (find)", timed(lambda: shares.find(probe),
                                                    options.rounds))
        show("unknown token lookup", timed(lambda: shares.find("Z" * 32), options.rounds))
        show("owner check (account read)", timed(lambda: accounts.get("alice"),
                                                 options.rounds))
        show("take a use (conditional UPDATE)", timed(lambda: shares.take_use(share.id),
                                                      options.rounds))
        secret = new_secret()
        now = time.time()
        code = code_at(secret, now)
        show("TOTP check over the +-1 window", timed(lambda: matching_step(secret, code, now),
                                                     options.rounds))
        box = SecretBox(root / "secret.key")
        sealed = box.seal(secret.encode(), "totp:alice")
        show("open the sealed secret (AES-GCM)", timed(lambda: box.open(sealed, "totp:alice"),
                                                       options.rounds))
        hashes = [hash_password(f"app password {i}") for i in range(options.apps)]
        rounds = max(5, options.rounds // 100)
        show("app password: one argon2id verify (by id)",
             timed(lambda: verify_password(hashes[-1], "app password 0"), rounds))
        show(f"without ids: try all {options.apps} (worst case)",
             timed(lambda: [verify_password(h, "nope") for h in hashes], rounds))


if __name__ == "__main__":
    main()
