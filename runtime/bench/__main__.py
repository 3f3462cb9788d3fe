"""Benchmarks. `python -m loomlm.runtime.bench {offline,radix} --help`."""

from __future__ import annotations

import argparse

from . import offline, radix


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loomlm.runtime.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    offline.add_arguments(
        sub.add_parser("offline", help="loomlm vs transformers (and vLLM), offline")
    )
    radix.add_arguments(
        sub.add_parser("radix", help="prefix cache on vs off, chunked prefill on vs off")
    )
    args = parser.parse_args()
    if args.command == "offline":
        offline.main(args)
    elif args.command == "radix":
        radix.main(args)


if __name__ == "__main__":
    main()
