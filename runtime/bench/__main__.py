"""Benchmarks. `python -m loomlm.runtime.bench {offline,radix,constrained,serving,load} --help`."""

from __future__ import annotations

import argparse

from . import constrained, load_test, offline, radix, serving


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
    serving.add_arguments(
        sub.add_parser(
            "serving", help="loomlm serve at several concurrencies vs the offline engine"
        )
    )
    load_test.add_arguments(
        sub.add_parser("load", help="load test: concurrent streaming clients, outputs checked")
    )
    args = parser.parse_args()
    if args.command == "offline":
        offline.main(args)
    elif args.command == "radix":
        radix.main(args)
    elif args.command == "constrained":
        constrained.main(args)
    elif args.command == "serving":
        serving.main(args)
    elif args.command == "load":
        load_test.main(args)


if __name__ == "__main__":
    main()
