"""The compile side: a Flax model traced into layers, cut into stage programs, exported.

    tracing.py    trace(model, variables, batch, loss_fn) -> Traced (the layers, the jaxpr)
    units.py      which scopes are cut units (the depth rule, `layers=`), runs and glue
    unroll.py     scans over layers re-traced as their iterations, stacked leaves as slices
    nnx_trace.py  NNX modules: variables from `nnx.split`, scopes JaxPipe writes (imports flax)
    split.py      Traced.split(cuts) -> Staged (stage programs, their in-process reference run)
    stage.py      one stage's forward and backward programs and its specs
    reference.py  the in-process run of the stages over micro-batches (the reference)
    bundle.py     Staged.export() -> bytes; load_stages(bytes) -> StageRunner
    profiling.py  profile(traced) -> planners.ModelProfile
    batch.py      the batch size and raw PRNG keys, shared by the above

Nothing here imports `jaxpipe.runtime`: a stage bundle is made without knowing where it runs.
"""
