"""`lucid ...` in-process for the editing tests: the exit code, 0 when main returns."""

from lucidml.cli import main


def lucid(*args) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return exc.code
    return 0
