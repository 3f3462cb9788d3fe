"""Benchmarks. `python -m loomlm.runtime.bench {offline,radix,constrained} --help`."""

from __future__ import annotations

import argparse

from . import constrained, offline, radix


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loomlm.runtime.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    offline.add_arguments(
        sub.add_parser("offline", help="loomlm vs transformers (and vLLM), offline")
    )
    radix.add_arguments(
        sub.add_parser("radix", help="prefix cache on vs off, chunked prefill on vs off")
    )
    constrained.add_arguments(
        sub.add_parser("constrained", help="constrained decoding vs llguidance, xgrammar, outlines")
    )
    args = parser.parse_args()
    if args.command == "offline":
        offline.main(args)
    elif args.command == "radix":
        radix.main(args)
    elif args.command == "constrained":
        constrained.main(args)


if __name__ == "__main__":
    main()
