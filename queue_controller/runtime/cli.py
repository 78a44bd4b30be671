"""`ckq-run`: the in-pod checkpoint runtime's command line.

    ckq-run --dir DIR [--restore ID|latest] [--mode criu|signal] [options] -- CMD [ARGS...]
    ckq-run checkpoint --dir DIR [--leave-running] [--pre-dump] [--full]
    ckq-run list --dir DIR
    ckq-run verify --dir DIR ID

Exit codes of the supervisor: the workload's own code (128+N when killed by signal N); 75 when the
workload was checkpointed and stopped (restore it to continue); 69 when CRIU is unusable or a restore
was refused or failed; 78 when the encryption key asked for is missing or malformed (nothing was
started); 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from queue_controller.runtime import control, crypto, exits, restorer, staging
from queue_controller.runtime import manifest as mf
from queue_controller.runtime.checkpointer import Settings
from queue_controller.runtime.errors import RuntimeFailure
from queue_controller.runtime.exits import EXIT_KEY, EXIT_SETUP
from queue_controller.runtime.store import Store
from queue_controller.runtime.supervisor import Supervisor


def _dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=os.environ.get("CKQ_DIR"), required="CKQ_DIR" not in os.environ,
                        help="checkpoint volume (also $CKQ_DIR)")


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ckq-run", usage="ckq-run --dir DIR [options] -- CMD [ARGS...]",
                                description="Supervise CMD and checkpoint/restore it with CRIU or a signal.")
    _dir_arg(p)
    p.add_argument("--restore", metavar="ID",
                   help="restore from DIR/checkpoints/ID ('latest' for the newest)")
    p.add_argument("--await-staged", type=float, default=None, metavar="SECONDS",
                   help="with --restore ID: wait this long for the node agent to stage the checkpoint on this "
                        "node (node-local stores); exit 69 if it fails or does not arrive")
    p.add_argument("--mode", choices=["criu", "signal"], default="criu")
    p.add_argument("--exit-note", metavar="PATH", default=None,
                   help="when exiting with a code of its own (69, 75, 78), write why to PATH (the container's "
                        "termination message file), so it is not taken for the workload's exit code")
    p.add_argument("--signal", default="SIGUSR1", help="Signal mode: the signal asking the app to save")
    p.add_argument("--signal-timeout", type=float, default=300.0,
                   help="Signal mode: seconds to wait for the ack")
    p.add_argument("--writable", action="append", default=[], metavar="PATH",
                   help="a path whose contents are saved with each checkpoint (repeatable; also "
                        "$CKQ_WRITABLE_PATHS, colon-separated)")
    p.add_argument("--tcp", choices=["close", "established"], default="close",
                   help="established TCP connections: closed on restore (default) or kept in repair mode")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--encrypt-key-file", help="encrypt checkpoints at rest (AES-256-GCM) with this key "
                      "(missing or malformed: exit 78 before starting anything)")
    keys.add_argument("--default-key-file",
                      help="encrypt with this key when it exists (the namespace's default key Secret, "
                           "mounted optional); its directory empty: store unencrypted; exit 78 when the "
                           "directory holds other files but not this one")
    p.add_argument("--max-chain", type=int, default=8, help="incremental checkpoints before a full one")
    p.add_argument("--pid-base", type=int, default=1000, help="as PID 1, start workload PIDs above this")
    p.add_argument("--stop-timeout", type=float, default=0.0,
                   help="after forwarding SIGTERM, SIGKILL the workload after this many seconds (0: never)")
    p.add_argument("--criu-opt", action="append", default=[], help="extra option passed to criu (repeatable)")
    p.add_argument("--staging", default="auto",
                   help="where incremental dumps stage CRIU's full images: auto (/dev/shm when it has "
                        "room for the workload's memory), none (the checkpoint volume), or a directory")
    return p


def _parse_signal(name: str) -> int:
    key = name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()
    try:
        return int(signal.Signals[key])
    except KeyError:
        raise RuntimeFailure(f"unknown signal {name!r}") from None


def _key(args: argparse.Namespace) -> bytes | None:
    if args.encrypt_key_file:
        return crypto.load_key(args.encrypt_key_file)
    if args.default_key_file:
        return crypto.load_default_key(args.default_key_file)
    return None


def _run(argv: list[str]) -> tuple[int, str | None]:
    if "--" in argv:
        cut = argv.index("--")
        opts, cmd = argv[:cut], argv[cut + 1 :]
    else:
        opts, cmd = argv, []
    args = _run_parser().parse_args(opts)
    if not cmd and not args.restore:
        _run_parser().error("give the workload command after --")
    if args.await_staged is not None:
        if not args.restore or args.restore == "latest":
            _run_parser().error("--await-staged needs --restore ID (a checkpoint id, not 'latest')")
        staging.await_staged(Store(Path(args.dir)).checkpoints, args.restore, args.await_staged)
    writable = list(args.writable)
    writable += [p for p in os.environ.get("CKQ_WRITABLE_PATHS", "").split(":") if p]
    settings = Settings(
        store=Store(Path(args.dir)), mode="Signal" if args.mode == "signal" else "CRIU", tcp=args.tcp,
        writable=[str(Path(p).resolve()) for p in writable],
        key=_key(args),
        max_chain=args.max_chain, signal=_parse_signal(args.signal), signal_timeout=args.signal_timeout,
        extra_criu=list(args.criu_opt), staging=args.staging,
    )
    sup = Supervisor(settings, cmd, args.restore, pid_base=args.pid_base, stop_timeout=args.stop_timeout)
    code = sup.run()
    return code, sup.own_exit


def _checkpoint(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ckq-run checkpoint", description="Checkpoint the supervised workload.")
    _dir_arg(p)
    p.add_argument("--leave-running", action="store_true", help="keep the workload running after the dump")
    p.add_argument("--pre-dump", action="store_true",
                   help="memory-only pass that the next checkpoint is taken incrementally against")
    p.add_argument("--full", action="store_true", help="do not take it incrementally")
    p.add_argument("--json", action="store_true", help="print the whole manifest")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the supervisor")
    args = p.parse_args(argv)
    reply = control.request(Store(Path(args.dir)).socket,
                            {"op": "checkpoint", "leaveRunning": args.leave_running,
                             "preDump": args.pre_dump, "full": args.full}, timeout=args.timeout)
    if not reply.get("ok"):
        raise RuntimeFailure(f"checkpoint failed: {reply.get('error')}")
    print(json.dumps(reply["manifest"], indent=2) if args.json else reply["id"])
    return 0


def _list(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ckq-run list")
    _dir_arg(p)
    store = Store(Path(p.parse_args(argv).dir))
    for ckpt_id in store.ids():
        m = mf.read_manifest(store.path(ckpt_id))
        print(f"{m.id}  {m.kind:8}  {m.sizeBytes:>14}  parent={m.parent or '-'}  {m.created}")
    return 0


def _verify(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ckq-run verify")
    _dir_arg(p)
    p.add_argument("id")
    args = p.parse_args(argv)
    m = restorer.verify_chain(Store(Path(args.dir)), args.id)
    print(f"{m.id}: ok (sha256 {m.sha256})")
    return 0


def _exit_note_path(argv: list[str]) -> str | None:
    """`--exit-note PATH` among the run options (before `--`), read without the parser: the note is
    also written when parsing or setting up fails."""
    opts = argv[:argv.index("--")] if "--" in argv else argv
    for i, arg in enumerate(opts):
        if arg == "--exit-note" and i + 1 < len(opts):
            return opts[i + 1]
        if arg.startswith("--exit-note="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"checkpoint": _checkpoint, "list": _list, "verify": _verify}
    running = not (argv and argv[0] in commands)
    why: str | None = None
    try:
        if running:
            code, why = _run(argv)
        else:
            code = commands[argv[0]](argv[1:])
    except crypto.KeyUnavailable as exc:
        print(f"ckq-run: error: {exc}", file=sys.stderr)
        code, why = EXIT_KEY, f"encryption key unavailable: {exc}"
    except RuntimeFailure as exc:
        print(f"ckq-run: error: {exc}", file=sys.stderr)
        code = EXIT_SETUP if running else 1
        why = f"could not start or restore the workload: {exc}"
    except KeyboardInterrupt:
        code = 130
    if running and why is not None:
        exits.write_note(_exit_note_path(argv), code, why[:2000])
    sys.exit(code)


if __name__ == "__main__":
    main()
