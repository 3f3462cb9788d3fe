"""Benchmarks. `python -m loomlm.runtime.bench offline --help`."""

from __future__ import annotations

import argparse

from . import offline


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loomlm.runtime.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    offline.add_arguments(
        sub.add_parser("offline", help="loomlm vs transformers (and vLLM), offline")
    )
    args = parser.parse_args()
    if args.command == "offline":
        offline.main(args)


if __name__ == "__main__":
    main()
