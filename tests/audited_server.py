"""uvicorn under a Python audit hook that logs every file the server process touches.

    python tests/audited_server.py AUDIT_LOG [uvicorn arguments...]

Each ``open`` / ``os.listdir`` / ``os.scandir`` / ``os.remove`` / ``os.rename`` / ``os.mkdir`` /
``os.rmdir`` / ``shutil.rmtree`` / ``os.chmod`` / ``os.truncate`` event is written to AUDIT_LOG as one
line ``event<TAB>path`` (``repr`` of a non-text path), so the path-traversal tests can assert that no
request made the server open, list or delete anything outside the allowed folders.
"""

from __future__ import annotations

import os
import sys

EVENTS = {"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.replace", "os.mkdir", "os.rmdir",
          "shutil.rmtree", "os.chmod", "os.truncate", "os.link", "os.symlink"}


def main() -> None:
    log_path = sys.argv[1]
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")

    def hook(event, args):
        if event not in EVENTS or not args:
            return
        path = args[0]
        if isinstance(path, int):  # an fd (os.fdopen, dir_fd=...): no new path
            return
        if hasattr(path, "__fspath__"):
            path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        log.write(f"{event}\t{path if isinstance(path, str) else repr(path)}\n")

    sys.addaudithook(hook)
    sys.argv = ["uvicorn", *sys.argv[2:]]
    from uvicorn.main import main as uvicorn_main

    uvicorn_main()


if __name__ == "__main__":
    main()
