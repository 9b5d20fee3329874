"""Run a command and pass its output through; when it has printed nothing for ``--every`` seconds, print one
line saying it is still working, so no step a newcomer waits on is silent for long (``make install`` wraps its
pip and op-build steps in it). Standard library only: it runs before the venv exists.

    python3 launchers/heartbeat.py [--every 10] [--what TEXT] [--only REGEX] -- COMMAND [ARG ...]

``--only``: pass through only the lines matching REGEX (the others neither show nor count as output; when the
command fails, the last 200 of them follow, to show what went wrong). Exits with the command's exit code.
"""
from __future__ import annotations

import argparse
import collections
import math
import re
import subprocess
import sys
import threading
import time
from typing import NoReturn


def seconds(text: str) -> float:
    """``--every``: a finite number of seconds > 0 (NaN never spoke up; 0 and below spoke every second)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def regex(text: str) -> re.Pattern[bytes]:
    """``--only``: a regular expression, matched against the command's output lines as bytes."""
    try:
        return re.compile(text.encode())
    except re.error as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression ({err})") from None


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line and exit code 2, as megamythos.errors.ArgumentParser's (not
    imported: this script runs before the venv exists), without the usage block above it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python3 launchers/heartbeat.py", description=__doc__.replace("``", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--every", type=seconds, default=10.0,
                        help="seconds of silence before a line is printed (default: %(default)g)")
    parser.add_argument("--what", default="working", help="what the line says is going on (default: %(default)s)")
    parser.add_argument("--only", type=regex, default=None, help="show only the output lines matching this regex")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    start = last = time.monotonic()
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    except OSError as err:  # not found, not executable: the command line's mistake, not a traceback
        parser.error(f"cannot run {command[0]}: {err.strerror}")
    done = threading.Event()

    def tick() -> None:
        nonlocal last
        while not done.wait(1.0):
            if time.monotonic() - last >= args.every:
                print(f"  ... still {args.what} ({time.monotonic() - start:.0f} s)", flush=True)
                last = time.monotonic()

    threading.Thread(target=tick, daemon=True).start()
    hidden: collections.deque[bytes] = collections.deque(maxlen=200)
    for line in iter(proc.stdout.readline, b""):
        if args.only is not None and not args.only.search(line):
            hidden.append(line)
            continue
        last = time.monotonic()
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
    code = proc.wait()
    done.set()
    if code and hidden:
        sys.stdout.buffer.write(b"".join(hidden))
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
