"""Executors: who runs a campaign's resident groups, and where.

A campaign is a list of resident groups (``plan_campaign``); a group starts its servers once,
runs its pending experiments and stops them (``group.run_group``), and needs one whole GPU.
An executor decides where each group runs; nothing else changes between executors, and the
run directory they leave is the same file for file (the manifests say who ran what, where:
``executor``, ``host``, ``gpu``).

``local`` (default)
    Without ``--gpus``: groups one after another in this process, on the spec's GPU.
    With ``--gpus 0,1,...``: groups side by side, one per listed GPU ("slot"); each group
    runs in its own worker process (multiprocessing, spawn) with ``CUDA_VISIBLE_DEVICES``
    set to its GPU (``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so the number is also the NVML index
    that the sampler reads). Workers write straight into the run directory. On a host
    without a GPU the numbers are pseudo-slots: groups still run side by side (on the CPU,
    sharing its cores), the manifests' ``gpu`` is null. That is how the parallel path is
    tested without a GPU.
``ray``
    Each group is a Ray task asking for one GPU (``num_gpus=1``; on a cluster without GPUs,
    one CPU instead). The task runs ``run_group`` into a temporary run directory on its node
    and streams each experiment's files back (relative path -> bytes) as soon as the
    experiment ends; the driver writes them into the campaign's run directory atomically,
    data files first and ``manifest.json`` last, so a manifest that says ``completed`` always
    has its files. Server logs follow when the group ends.

Failures: a worker that dies (killed, out of memory, node lost) leaves its unreported
experiments ``failed`` with the reason; ``retries=N`` runs a group's failed experiments again,
in fresh servers, up to N times; the campaign always completes. ``--resume`` skips completed
manifests whoever wrote them, so it works across executors.

Servers started by a worker that is killed would outlive it (they run in their own
sessions); every worker process keeps a small guard process that kills the process groups of
its servers when the worker's end of a pipe closes without a goodbye (``guard``).

Modules: ``base`` (the protocol, the group job, the retry books every executor keeps),
``factory`` (the executor ``cotenant run`` asks for), ``local``, ``ray``, ``guard``. This file
imports nothing: the guard runs as ``python -m orchestrator.executors.guard``, which imports
the packages above it, and must start cheap.
"""
