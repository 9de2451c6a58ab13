"""The runtime: a job in an object store, its ranks on functions, and the driver watching them.

    job.py         JobSpec and the key layout under jobs/<job-id>/
    event.py       what a function is told (RankEvent, TaskEvent) and answers (RankStatus)
    metrics.py     what a rank measured (RankMetrics: iterations, requests, timeline)
    dataset.py     dataset shards and which rows each micro-batch reads
    optim.py       optimizers by name (a convenience that makes the optax object)
    optimizer.py   any optax optimizer as exported per-stage init/update (+ partials) programs
    coupling.py    which stages the traced update couples: leaf-local, sums to exchange, refused
    checkpoint.py  per-stage parameters and optimizer state in the store
    arrays.py      the store's array objects by layout (messages, named arrays)
    worker.py      the handler a function runs: parse the event, run the rank, report
    rank.py        one rank: its stage program, its lanes, one iteration
    driver.py      launches the ranks, watches their Outcomes, restarts and hands over
    billing.py     the platform's prices applied to the metrics; the cost guard
    options.py     TrainOptions, every knob of `jaxpipe train`
    planning.py    the planning problem (profile, cached) and the checks of a plan
    train.py       `jaxpipe train`: prepare a job (validate, trace, plan, split, upload), run it
    summary.py     the run's Summary, measured against the predictions
    lithops_job.py --platform lithops in a job: store, platform, checks, launcher, bill
    platforms/     where ranks run: local processes, AWS Lambda or Lithops calls (base.py:
                   Outcome, Launcher)

The runtime may import `jaxpipe.staging`; never the other way round.
"""
