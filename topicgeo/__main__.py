"""``python -m topicgeo <command>``: summary | demo."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; heavy imports happen inside the command."""
    argv = sys.argv[1:] if argv is None else argv
    commands = {"summary": "topicgeo.summary", "demo": "topicgeo.demo"}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m topicgeo {{{','.join(commands)}}} [options]", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
