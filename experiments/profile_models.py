"""Profiles of the paper's four full-size models on this CPU, with JaxPipe's profiler.

    python -m experiments.profile_models                      # all four (about 25 min, 2 cores)
    python -m experiments.profile_models --models bert-large --sizes 1,2,4,8 --repeats 3

Writes ``experiments/profiles/<model>.json`` (a ``planners.ModelProfile``). Every layer is
measured by ``jaxpipe.profile``'s own per-layer routine (one-layer stage, jitted, warm-up, median
of ``repeats`` runs) with one saving: layers whose stage programs are identical in shape (same
parameter shapes, same input and output shapes, same layer kind) are measured once and the
numbers are reused, within a model and across models of one run. ResNet-101's 22 identical
``layer3`` blocks, BERT-Large's 24 encoder layers and AmoebaNet-D(36, 256)'s extra normal cells
(identical in shape to AmoebaNet-D(18, 256)'s, which this script checks, not assumes) are each
measured once; ``meta["measured_as"]`` records which layer's numbers every layer carries.
``--no-reuse`` measures every layer. Parameter and boundary bytes always come from each model's
own trace.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

PROFILES = Path(__file__).resolve().parent / "profiles"
MODELS = ("bert-large", "resnet101", "amoebanet18", "amoebanet36")
# AmoebaNet layers are the slowest to compile and run: profiled at two sizes by default.
# BERT cannot be traced at b = 1 (jaxpipe.trace: "the model's structure changes with the batch
# size (2 -> 1)"; `jaxpipe profile --model bert-large-tiny --micro-batches 1,2` fails the same
# way), so BERT is profiled at 2, 4, 8 and b = 1 comes from the linear fit.
DEFAULT_SIZES = {"amoebanet18": (1, 4), "amoebanet36": (1, 4), "bert-large": (2, 4, 8)}


def _trace(name: str, batch: int) -> Any:
    import jax

    import jaxpipe
    from jaxpipe import models

    spec = models.get(name)
    variables = spec.init(jax.random.PRNGKey(0))
    data = spec.make_batch(jax.random.PRNGKey(1), batch)
    rngs = {"dropout": jax.random.PRNGKey(2)} if spec.uses_dropout else None
    return jaxpipe.trace(spec.module, variables, data, spec.loss_fn, rngs=rngs)


def signature(traced: Any, index: int, b: int) -> str:
    """Layer kind + parameter, input and output shapes of layer ``index`` as a one-layer stage."""
    from jaxpipe.staging.stage import build_stage

    stage = build_stage(traced.program(b), traced.params.paths, traced.state.paths, 0, index,
                        index + 1, "stash")
    spec = stage.spec
    leaves = dict(zip(traced.params.paths, traced.params.leaves))
    shapes = [tuple(getattr(leaves.get(p), "shape", ())) for p in spec.param_paths]
    kind = re.sub(r"\d+", "#", traced.layers[index].name)
    return json.dumps([kind, shapes, [t.shape for t in spec.inputs],
                       [t.shape for t in spec.outputs]])


def profile_model(name: str, sizes: tuple[int, ...], repeats: int, cache: dict[str, Any],
                  reuse: bool = True, dots: bool = False) -> dict[str, Any]:
    """Profile ``name``; ``cache`` maps signature -> (layer name, per-size measurements)."""
    import jax
    import numpy as np

    from jaxpipe.staging.profiling import _dots_fields, _fit, _measure

    t0 = time.time()
    traced = _trace(name, max(sizes))
    print(f"[{name}] traced {len(traced.layers)} layers in {time.time() - t0:.0f} s", flush=True)
    layers, measured_as = [], {}
    for i, layer in enumerate(traced.layers):
        key = signature(traced, i, min(sizes)) + json.dumps(sizes) if reuse else f"{name}/{i}"
        if key not in cache:
            t1 = time.time()
            per_b = {b: _measure(traced, i, b, repeats, "stash") for b in sizes}
            if dots:  # the dots-mode stage's backward and residuals (no second forward)
                for b in sizes:
                    m = _measure(traced, i, b, repeats, "dots", forward=False)
                    per_b[b] |= {"dots_bwd": m["bwd"], "dots_saved": m["saved"]}
            cache[key] = (f"{name}/{layer.name}", per_b)
            print(f"[{name}] {layer.name}: measured in {time.time() - t1:.0f} s", flush=True)
        source, per_b = cache[key]
        measured_as[layer.name] = source
        fwd = {b: per_b[b]["fwd"] for b in sizes}
        bwd = {b: per_b[b]["bwd"] for b in sizes}
        fa, fb = _fit(fwd)
        ba, bb = _fit(bwd)
        layers.append({
            "name": layer.name, "param_bytes": int(layer.param_bytes),
            "stash_bytes_per_sample": max(_fit({b: per_b[b]["saved"] for b in sizes})[1], 0.0),
            "boundary_bytes_per_sample": float(layer.boundary_bytes_per_sample),
            "fwd_alpha": fa, "fwd_beta": fb, "bwd_alpha": ba, "bwd_beta": bb,
            "fwd_seconds": {str(b): v for b, v in fwd.items()},
            "bwd_seconds": {str(b): v for b, v in bwd.items()},
            "flops_per_sample": max(_fit({b: per_b[b]["flops"] for b in sizes})[1], 0.0),
            **(_dots_fields({k: {b: per_b[b][k] for b in sizes}
                             for k in ("dots_bwd", "dots_saved")}) if dots else {}),
        })
    data = traced.data_specs(1)[: len(traced.inputs.leaves) + len(traced.targets.leaves)]
    return {
        "model": name, "layers": layers,
        "input_bytes_per_sample": float(sum(np.prod(s.shape) * s.dtype.itemsize for s in data)),
        "reference_cpus": float(len(os.sched_getaffinity(0))), "dtype_bytes": 4,
        "meta": {"micro_batch_sizes": list(sizes), "repeats": repeats, "jax": jax.__version__,
                 "measured_as": measured_as, "profiled_seconds": round(time.time() - t0, 1),
                 "tool": "experiments/profile_models.py (jaxpipe.profile per-layer measurement)"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default=None, help="micro-batch sizes, e.g. 1,2,4,8 "
                        "(default: 1,2,4,8; AmoebaNet 1,4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reuse", action="store_true", help="measure every layer")
    parser.add_argument("--dots", action="store_true",
                        help="also measure dots mode (residual bytes and backward time)")
    parser.add_argument("--out", type=Path, default=PROFILES)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Any] = {}
    for name in args.models.split(","):
        sizes = (tuple(int(s) for s in args.sizes.split(",")) if args.sizes
                 else DEFAULT_SIZES.get(name, (1, 2, 4, 8)))
        result = profile_model(name, sizes, args.repeats, cache, reuse=not args.no_reuse,
                               dots=args.dots)
        from planners import ModelProfile

        ModelProfile.from_dict(result)  # validate
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path} ({result['meta']['profiled_seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
