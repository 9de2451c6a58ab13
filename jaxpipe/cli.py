"""The `jaxpipe` command: demo, profile, plan (and train, once the runtime lands)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jaxpipe` console script."""
    parser = argparse.ArgumentParser(prog="jaxpipe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="trace, split and check a zoo model against the unsplit model")
    demo.add_argument("--model", default="mlp", help="zoo model name (default: mlp)")
    demo.add_argument("--stages", type=int, default=3, help="number of stages (default: 3)")
    demo.add_argument("--batch", type=int, default=16, help="batch size (default: 16)")
    demo.add_argument("--micro-batches", type=int, default=4, help="M (default: 4)")
    demo.set_defaults(run=_demo)

    prof = commands.add_parser("profile", help="profile every layer of a zoo model")
    prof.add_argument("--model", required=True, help="zoo model name, e.g. resnet101")
    prof.add_argument("--micro-batches", default="1,2,4,8",
                      help="micro-batch sizes to time, comma-separated (default: 1,2,4,8)")
    prof.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    prof.add_argument("-o", "--output", default="profile.json", help="where to write the JSON")
    prof.set_defaults(run=_profile)

    from planners.cli import add_plan_arguments, run_plan

    plan = commands.add_parser("plan", help="plan stages, memory and replicas from a profile")
    add_plan_arguments(plan)
    plan.set_defaults(run=run_plan)

    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


def _demo(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    import jaxpipe
    from jaxpipe import models

    spec = models.get(args.model)
    key = jax.random.PRNGKey(0)
    variables = spec.init(key)
    batch = spec.make_batch(jax.random.PRNGKey(1), args.batch)
    rngs = {"dropout": jax.random.PRNGKey(2)} if spec.uses_dropout else None
    traced = jaxpipe.trace(spec.module, variables, batch, spec.loss_fn, rngs=rngs)
    n = len(traced.layers)
    stages = max(1, min(args.stages, n))
    cuts = sorted({round(n * k / stages) for k in range(1, stages)} - {0, n})
    print(f"{spec.name}: {n} layers, cut at {cuts} into {len(cuts) + 1} stages")
    for layer in traced.layers:
        print(f"  {layer.index:3d} {layer.name:24s} {layer.param_bytes / 1e6:9.3f} MB params "
              f"{layer.boundary_bytes_per_sample / 1e3:9.2f} kB/sample across a cut after it")

    def unsplit(params):
        state = {k: v for k, v in variables.items() if k != "params"}
        out = spec.module.apply({"params": params, **state}, batch[0], rngs=rngs,
                                mutable=list(state) or False)
        out = out[0] if state else out
        return spec.loss_fn(out, batch[1])

    ref_loss, ref_grads = jax.value_and_grad(unsplit)(variables["params"])
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads))
    worst = 0.0
    for mode in ("stash", "recompute"):
        staged = traced.split(cuts, mode)
        loss, grads, _ = staged.value_and_grad(variables, batch, micro_batches=1)
        err = max(float(np.max(np.abs(a - b))) for a, b in
                  zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))) / scale
        worst = max(worst, err)
        print(f"{mode:9s}: loss {float(loss):.6f} (unsplit {float(ref_loss):.6f}), "
              f"max relative gradient error {err:.2e}")
    staged = traced.split(cuts)
    blob = staged.export(args.batch // args.micro_batches)
    runner = jaxpipe.load_stages(blob)
    loss, _, _ = runner.value_and_grad(variables, batch, rngs=rngs)
    print(f"bundle: {len(blob) / 1e6:.2f} MB, {args.micro_batches} micro-batches through the "
          f"loaded programs: loss {float(loss):.6f}")
    ok = worst <= 1e-5
    print("OK: stage gradients equal the unsplit model's" if ok else "MISMATCH")
    return 0 if ok else 1


def _profile(args: argparse.Namespace) -> int:
    import jax
    from tqdm import tqdm

    import jaxpipe
    from jaxpipe import models
    from jaxpipe.profile import profile

    sizes = [int(s) for s in str(args.micro_batches).split(",") if s]
    spec = models.get(args.model)
    variables = spec.init(jax.random.PRNGKey(0))
    batch = spec.make_batch(jax.random.PRNGKey(1), max(sizes))
    rngs = {"dropout": jax.random.PRNGKey(2)} if spec.uses_dropout else None
    traced = jaxpipe.trace(spec.module, variables, batch, spec.loss_fn, rngs=rngs)
    with tqdm(total=len(traced.layers), desc=f"profiling {spec.name}", unit="layer",
              file=sys.stderr) as bar:
        result = profile(traced, sizes, repeats=args.repeats, name=spec.name,
                         progress=lambda msg: (bar.set_postfix_str(msg), bar.update()))
    with open(args.output, "w") as f:
        json.dump(result.to_dict(), f, indent=1)
    print(f"wrote {args.output}: {len(result.layers)} layers of {spec.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
