"""
Forty slow anonymous readers of one folder share link, on a real server
(curl over TLS on loopback, 20 KiB/s each): how many get a ZIP, how many a
503, and the server's threads and RSS while they read.

Before the cap (main at 512b5ac, same 2 shared cores): 20 got 200 (the
other 20 met the per-address connection limit), 32 server threads, RSS
292 MiB, 20 uses taken.  With it: 2 get the ZIP (the owner's share) and 38
get 503 with Retry-After, 13 threads, RSS 97 MiB, 2 uses taken.
Run: ``python bench/share_zip_cap.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rumpus_secure.shares import SQLiteShareStore  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

READERS = 40


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="share-zip-cap-"))
    try:
        with ServerProcess(tmp) as server:
            server.add_user("owner", "a long password 1")
            folder = server.home("owner") / "dir"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
            store = SQLiteShareStore(server.data_dir / "accounts.sqlite3")
            share, token = store.create("owner", "download", "/dir", time.time() + 3600,
                                        None, None, None, "")
            url = f"https://127.0.0.1:{server.https_port}/s/{token}/get"
            readers = [subprocess.Popen(
                ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}\n",
                 "--limit-rate", "20k", "--max-time", "8", url],
                stdout=subprocess.PIPE, text=True) for _ in range(READERS)]
            time.sleep(3)
            assert server.process is not None
            pid = server.process.pid
            threads = len(os.listdir(f"/proc/{pid}/task"))
            rss = next(line.split(":")[1].strip() for line in open(f"/proc/{pid}/status")
                       if line.startswith("VmRSS"))
            codes = Counter(r.communicate()[0].strip() for r in readers)
            print(f"{READERS} slow readers: {dict(codes)}; server threads while "
                  f"reading {threads}, RSS {rss}; uses taken {store.get(share.id).uses}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
