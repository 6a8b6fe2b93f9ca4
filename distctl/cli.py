"""The `distctl` command.

Subcommands that belong to the trainer or the service import them only when they run, so
that `distctl` itself depends on neither; their own argument parsers take the rest of the
command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from distctl.errors import DistctlError


def _model_prepare(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="distctl model prepare",
        description="Prepare the base model folder ($DISTCTL_MODEL, default the embedded "
        "SmolLM2-135M-Instruct) and check that it loads and generates.",
    )
    parser.parse_args(argv)
    from distctl.basemodel import prepare_base_model
    from distctl.config import Settings

    prepare_base_model(Settings())
    return 0


def _forward(module: str, function: str) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), function)(list(argv)) or 0)

    return run


def _model(argv: Sequence[str]) -> int:
    if not argv or argv[0] != "prepare":
        print("usage: distctl model prepare", file=sys.stderr)
        return 2
    return _model_prepare(argv[1:])


COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "model": ("prepare the base model (`distctl model prepare`)", _model),
    "serve": ("run the HTTP service", _forward("service.main", "main")),
    "train": (
        "train one LoRA adapter for a target distribution",
        _forward("trainer.train", "main"),
    ),
    "eval": ("evaluate a method over many rounds", _forward("trainer.evaluate", "main")),
    "eval-all": ("run the evaluation grid", _forward("trainer.evaluate", "main_all")),
}


def _usage() -> str:
    lines = ["usage: distctl COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (help_, _) in COMMANDS.items()]
    lines += ["", "`distctl COMMAND --help` describes each command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"distctl: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        return command[1](args[1:])
    except DistctlError as exc:
        print(f"distctl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
