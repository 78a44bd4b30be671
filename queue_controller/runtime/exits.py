"""ckq-run's own exit codes, and the note that tells them apart from the workload's.

ckq-run passes its workload's exit code through, so a code alone cannot say who chose it: a training
script that exits 78 (sysexits EX_CONFIG) on a bad config file would read as "the encryption key is
missing", and one that exits 69 after a restore as "this checkpoint cannot be restored" (the controller
would then fail a good checkpoint). So whenever ckq-run exits with a code of its own it also writes one
line, `ckq-run exit <code>: <why>`, to its container's termination message file
(`terminationMessagePath`, `/dev/termination-log` unless the template says otherwise; the controller
passes it as `--exit-note`). The kubelet puts that file's text in the container's status
(`state.terminated.message`), and the controller acts on one of these codes only when the note names
it: anything else is the workload's own exit, an ordinary failure.
"""

from __future__ import annotations

import re

EXIT_SETUP = 69  # EX_UNAVAILABLE: CRIU unusable, checkpoint refused, or the restore failed
EXIT_CHECKPOINTED = 75  # EX_TEMPFAIL: stopped for a checkpoint; restore to continue
EXIT_KEY = 78  # EX_CONFIG: the encryption key asked for is missing or malformed; nothing was started

NOTE_PREFIX = "ckq-run exit"
DEFAULT_NOTE_PATH = "/dev/termination-log"  # Kubernetes' default terminationMessagePath
_NOTE = re.compile(rf"^{re.escape(NOTE_PREFIX)} (\d+): ")


def note_line(code: int, why: str) -> str:
    return f"{NOTE_PREFIX} {code}: {why}\n"


def write_note(path: str | None, code: int, why: str) -> None:
    """Best effort: a container without a writable termination message file only loses the note (its
    exit is then read as the workload's: restarted, not misread)."""
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(note_line(code, why))
    except OSError:
        pass


def noted_code(message: str | None) -> int | None:
    """The exit code a container's termination message says ckq-run chose itself; None for any other
    message (the workload's own, or none)."""
    if not message:
        return None
    m = _NOTE.match(message.lstrip())
    return int(m.group(1)) if m else None
