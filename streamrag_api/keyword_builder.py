"""The child process that builds the API's keyword index apart (`streamrag_api.keyword`, "a first build in a child
process"): ``python -m streamrag_api.keyword_builder <parent pid>``, the request as JSON on stdin, the documents read
as JSON on stdout.

It dies with the API (PR_SET_PDEATHSIG): an orphan would go on holding tantivy's writer lock, and the API started
next would find its index directory taken. The signal is asked for before anything else, then the parent checked
(it may have died before the request took effect) - standard library only until then."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    parent = int(sys.argv[1])
    with contextlib.suppress(OSError, AttributeError):  # not Linux with glibc: an orphan lives until its build ends
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit("keyword index build: the API that asked for it is gone")
    request = json.loads(sys.stdin.read())
    from streamrag_api.keyword import build_in_child  # the heavy imports, once the parent is known to live

    print(json.dumps({"documents": build_in_child(request)}), flush=True)


if __name__ == "__main__":
    main()
