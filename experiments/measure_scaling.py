"""Amdahl parallel fractions of the paper's models' layers on this CPU, added to their profiles.

    python -m experiments.measure_scaling                    # the four stored profiles
    python -m experiments.measure_scaling --models resnet101 --repeats 5
    python -m experiments.measure_scaling --realtime          # on a busy machine, as root

``jaxpipe profile`` measures each layer's parallel fraction p as it profiles (one core vs all,
``jaxpipe.staging.profiling``); re-profiling the four full-size models costs about 20 minutes,
so this script measures only p, with the same routine, at each stored profile's largest
micro-batch size, for each distinct layer shape (``experiments.profile_models.signature``: the
22 identical ResNet-101 ``layer3`` blocks, the 24 BERT-Large encoder layers and AmoebaNet's
repeated normal cells are measured once), and writes ``parallel_fraction`` into every layer of
``experiments/profiles/<model>.json`` (times and sizes untouched), and the one-core and
all-core seconds and CPU clocks (``jaxpipe.staging.scaling.Scaling``) into ``meta["scaling"]``.
``planners.synthetic`` quotes these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from experiments.profile_models import MODELS, PROFILES, _trace, signature


def measure(name: str, repeats: int, cache: dict[str, Any], realtime: bool) -> dict[str, Any]:
    """p of every layer of the stored profile of ``name``; ``cache`` maps a layer signature to
    the (layer, one-core s, all-core s) measured for it (shared across models)."""
    from jaxpipe.staging.profiling import _measure

    path = PROFILES / f"{name}.json"
    data = json.loads(path.read_text())
    b = max(data["meta"]["micro_batch_sizes"])
    cores = sorted(os.sched_getaffinity(0))
    t0, load = time.time(), os.getloadavg()[0]
    traced = _trace(name, b)
    names = [layer["name"] for layer in data["layers"]]
    if names != [layer.name for layer in traced.layers]:
        raise SystemExit(f"{path}: its layers are not {name}'s traced layers; re-profile it")
    seconds: dict[str, dict[str, Any]] = {}
    for i, layer in enumerate(traced.layers):
        key = signature(traced, i, b) + f"@{b}"
        if key not in cache:
            sc = _measure(traced, i, b, repeats, cores, realtime)["scaling"]
            cache[key] = (f"{name}/{layer.name}", sc)
            print(f"[{name}] {layer.name}: " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in sc.to_dict().items()), flush=True)
        source, sc = cache[key]
        data["layers"][i]["parallel_fraction"] = round(sc.parallel_fraction, 4)
        seconds[layer.name] = {"measured_as": source} | sc.to_dict()
    data["meta"]["scaling"] = {
        "cores": len(cores), "micro_batch": b, "load_average": [load, os.getloadavg()[0]],
        "repeats": repeats, "realtime": realtime, "seconds": round(time.time() - t0, 1),
        "tool": "experiments/measure_scaling.py (jaxpipe.profile's one-core vs all-core runs)",
        "layers": seconds}
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--realtime", action="store_true",
                        help="time under SCHED_FIFO (a busy machine; jaxpipe.staging.scaling)")
    args = parser.parse_args(argv)
    cache: dict[str, Any] = {}
    for name in args.models.split(","):
        data = measure(name, args.repeats, cache, args.realtime)
        from planners import ModelProfile

        ModelProfile.from_dict(data)  # validate
        path = PROFILES / f"{name}.json"
        path.write_text(json.dumps(data, indent=1))
        print(f"wrote {path} ({data['meta']['scaling']['seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
