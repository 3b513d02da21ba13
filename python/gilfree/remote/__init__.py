"""The remote layer: what ProcessEngine and DaskEngine share to run map items in other
processes. The engines are adapters: they carry bytes (the process pool's socket frames
and memfds; Dask's tasks) and own scheduling and lifecycle; everything about what the
bytes mean lives here.

    messages.py  the named messages (Payload, Batch, Result, Part, Event) and the one
                 options object (RemoteOptions) built from the driver's Runtime
    driver.py    the driver side: encode payloads and batches (naming what does not
                 pickle), decode results into their slots, replay forwarded events; the
                 DualNode batch alignment both engines use
    session.py   the worker side: one Session per worker process (payload cache, maps
                 for @stateful failures, running a batch in sub-batches, boxing results
                 and errors, the event recorder), the @stateful registry and teardown

    transport.py       pickling itself (the one pickler), the one exception box and
                       shared memory (memfd) for large buffers
    process_worker.py  ProcessEngine's worker main loop (socket frames, status page)
    zygote.py          the forkserver that forks ProcessEngine's workers
"""
