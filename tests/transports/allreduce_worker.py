"""One rank of an all-reduce in its own process, as a function would run it (used by tests).

Usage: python -m tests.transports.allreduce_worker '<json>' with keys spec, group, rank,
world, length, seed, algorithm, timeout. The rank builds its vector from (seed, rank), runs
`allreduce_mean` on the store rebuilt from `spec`, writes the encoded result under
`out/<group>/<rank>` and prints its request counts as JSON.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from transports import allreduce_mean, encode, store_from_spec


def rank_vector(seed: int, rank: int, length: int) -> np.ndarray:
    """The input of `rank` in a test all-reduce."""
    return np.random.default_rng([seed, rank]).standard_normal(length).astype(np.float32)


def main(argv: list[str]) -> None:
    args = json.loads(argv[1])
    store = store_from_spec(args["spec"])
    vector = rank_vector(args["seed"], args["rank"], args["length"])
    out = allreduce_mean(store, args["group"], args["rank"], args["world"], vector,
                         algorithm=args["algorithm"], timeout=args["timeout"])
    stats = store.stats  # before writing the result, which is not part of the all-reduce
    store.put(f"out/{args['group']}/{args['rank']}", encode(out))
    print(json.dumps(stats.to_dict()))


if __name__ == "__main__":
    main(sys.argv)
