"""`python -m loadtest run SCENARIO.toml [--quick] [--target URL --api-key-file PATH]` and
`python -m loadtest ceiling [SCENARIO.toml]` (the generator alone against the no-op responder).

Argument parsing only; the run itself is loadtest.runner. Exit status: 0 pass, 1 a check was
violated, 2 the run could not complete.
"""

from __future__ import annotations

import argparse
import sys

from loadtest.runner import REPORTS, Options, run
from loadtest.scenario import ScenarioError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m loadtest", description="Load tests for the gateway")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one scenario and write its report")
    r.add_argument("scenario", help="a scenario file, e.g. loadtest/scenarios/steady-single.toml")
    r.add_argument("--quick", action="store_true", help="the scenario's CI-sized variant ([quick] table)")
    r.add_argument("--target", help="URL of an already running gateway on 127.0.0.1 (nothing is started)")
    r.add_argument("--api-key-file", help="file holding the API key for --target (an admin key also "
                                          "allows sender changes)")
    r.add_argument("--out", default=REPORTS, help=f"where report folders go (default {REPORTS})")
    r.add_argument("--ceiling-s", type=float, help="seconds of generator calibration (default 2 quick, 5 full)")
    r.add_argument("--keep-artifacts", action="store_true", help="keep netsim's record and the gateway's data")
    c = sub.add_parser("ceiling", help="only measure the generator against the no-op responder")
    c.add_argument("scenario", nargs="?", default="loadtest/scenarios/steady-single.toml",
                   help="whose request shape and connection count to use")
    c.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    if args.command == "ceiling":
        return _ceiling(args.scenario, args.seconds)
    if args.target and not args.api_key_file:
        ap.error("--target needs --api-key-file")
    if args.target:  # before the generator's calibration: a wrong target or key is said at once
        from loadtest.runner import TargetError, open_target
        try:
            open_target(args.target, args.api_key_file)
        except TargetError as exc:
            print(f"loadtest: {exc}", file=sys.stderr)
            return 2
    opts = Options(scenario=args.scenario, quick=args.quick, target=args.target, api_key_file=args.api_key_file,
                   out_root=args.out, ceiling_s=args.ceiling_s, keep_artifacts=args.keep_artifacts, argv=argv)
    try:
        return run(opts)
    except ScenarioError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2


def _ceiling(path: str, seconds: float) -> int:
    import json

    from loadtest.procs import pin_self
    from loadtest.runner import measure_ceiling
    from loadtest.scenario import load_scenario

    try:
        scn = load_scenario(path)
    except ScenarioError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    pin_self()
    print(json.dumps(measure_ceiling(scn, seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
