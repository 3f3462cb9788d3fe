"""The `loomlm` command: `loomlm serve [--model PATH] [--port N] ...`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .args import add_arguments, from_namespace


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loomlm")
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(
        sub.add_parser(
            "serve",
            help="serve a model over HTTP (SGLang's native protocol and the OpenAI API)",
        )
    )
    ns = parser.parse_args(argv)
    try:
        args = from_namespace(ns)
    except ValueError as exc:
        parser.error(str(exc))
    from .serve import serve  # torch and the engine load only once the arguments are good

    serve(args)


if __name__ == "__main__":
    main()
