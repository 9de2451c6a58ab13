"""The runtime: a job in an object store, its ranks on functions, and the driver watching them.

    job.py         JobSpec and the key layout under jobs/<job-id>/
    dataset.py     dataset shards and which rows each micro-batch reads
    optim.py       optimizer programs, run per stage
    checkpoint.py  per-stage parameters and optimizer state in the store
    worker.py      one rank: the handler a function runs
    driver.py      launches the ranks, watches them, restarts and hands over
    train.py       `jaxpipe train`: prepare a job (trace, plan, split, upload) and run it
    platforms/     where ranks run: local processes or AWS Lambda

The runtime may import `jaxpipe.staging`; never the other way round.
"""
