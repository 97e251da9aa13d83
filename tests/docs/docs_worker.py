"""The Python process of one docs page: runs its ```python blocks in order, in one namespace.

Started by tests/docs/test_examples.py as ``python docs_worker.py FD``. Each request is one
JSON line on stdin, ``{"code": ..., "where": "page.md:LINE"}``; each answer is one JSON line
on file descriptor FD, ``{"ok": bool, "stdout": ..., "error": ...}``. The process's own
stdout and stderr (the JVM's log lines among them) go wherever the runner sends them, so
only what a block prints through Python is compared with the page.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from typing import Any


def main() -> None:
    answers = os.fdopen(int(sys.argv[1]), "w", encoding="utf-8")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for line in sys.stdin:
        request = json.loads(line)
        out = io.StringIO()
        ok, error = True, ""
        try:
            code = compile(request["code"], request["where"], "exec")
            with contextlib.redirect_stdout(out):
                exec(code, namespace)
        except BaseException:
            ok, error = False, traceback.format_exc()
        answers.write(json.dumps({"ok": ok, "stdout": out.getvalue(), "error": error}) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
