"""The training job's entrypoint, for ``ray job submit`` and for running by hand.

::

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env-json '{"env_vars": {"MODELPLANE_URL": "http://HEAD:8000"}}' \\
        -- python -m training.job --config job.yaml

    python -m training.job --config job.yaml          # joins a running local Ray, or starts one
    python -m training.job --config job.yaml --set hyperparameters.epochs=2   # override a field

The job reports to the control plane named by ``MODELPLANE_URL`` with ``MODELPLANE_TOKEN``
(``modelplane train submit`` passes both, and the code commit in ``MODELPLANE_CODE_COMMIT``
and ``MODELPLANE_CODE_BRANCH``). Before its run starts it checks that the cluster can hold
its workers (refused with exit status 2 when it never can), then waits for them at most
``resources.placement_timeout_s``. Exit status: 0 done, 1 failed, 2 invalid spec, 130 stopped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_FAILED, EXIT_INVALID, EXIT_STOPPED = 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.job", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="The job spec (YAML).")
    parser.add_argument("--address", default=None,
                        help="Ray address (default: RAY_ADDRESS, or a running local Ray); "
                        "'local' starts a private one.")
    parser.add_argument("--no-register", action="store_true",
                        help="Train, evaluate and export, but register no version.")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="Override a field of the spec, e.g. hyperparameters.epochs=2 "
                        "(repeatable).")
    args = parser.parse_args(argv)
    from training.job_token import revoke_own_token

    try:
        return run_entrypoint(args.config, address=args.address, register=not args.no_register,
                              overrides=args.set)
    finally:
        # The token `train submit` minted for this job dies with it, whatever the outcome.
        revoke_own_token()


def run_entrypoint(config: str, *, address: str | None = None, num_cpus: int | None = None,
                   register: bool = True, overrides: Sequence[str] = ()) -> int:
    """Load the spec, run the job, and turn the outcome into an exit status and one line."""
    from modelplane.errors import ModelplaneError
    from training.errors import InvalidJobSpecError
    from training.runner import OVERDUE, STOP_REQUESTED, handle_stop_signal, run_job
    from training.spec import load_job_spec

    # `ray job stop` sends SIGTERM: unwind like Ctrl-C so the run is marked killed.
    handle_stop_signal()
    try:
        spec = load_job_spec(config, overrides)
        result = run_job(spec, address=address, num_cpus=num_cpus, register=register,
                         echo=lambda line: print(line, flush=True))
    except BaseException as error:
        # Ray may turn the interrupt into an error of its own: the request decides. A
        # deadline's interrupt landing as its step ended is the deadline's, not a stop.
        if OVERDUE and not STOP_REQUESTED.is_set() and not isinstance(error, ModelplaneError):
            print(f"error: {OVERDUE[0]} ({type(error).__name__}: {error})", file=sys.stderr,
                  flush=True)
            return EXIT_FAILED
        if STOP_REQUESTED.is_set() or isinstance(error, KeyboardInterrupt):
            print("stopped; the run is marked killed", file=sys.stderr, flush=True)
            return EXIT_STOPPED
        if not isinstance(error, ModelplaneError):
            raise
        print(f"error: {error.message}", file=sys.stderr, flush=True)
        return EXIT_INVALID if isinstance(error, InvalidJobSpecError) else EXIT_FAILED
    ending = f" at epoch {result.epochs}" if result.stopped_early else ""
    target = f"{result.model}:{result.version}" if result.version else "no version registered"
    print(f"done{' (stopped early' + ending + ')' if ending else ''}: run {result.run_id}, {target}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
