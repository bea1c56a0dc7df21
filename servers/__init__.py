"""The tenants: model presets, server processes, vLLM launching, the encoder server.

Imports stay light here (no torch, no vLLM); the pieces:

* ``servers.spec``      tenant specs (``VllmTenant``, ``EncoderTenant``)
* ``servers.presets``   ``resolve_model``, ``model_config``, ``build_preset``, ``list_presets``
                        (a package: ``recipes``, ``catalog``, ``build``, ``cache``)
* ``servers.process``   ``ServerProcess`` (own process group, log, health, stop),
                        ``free_port``, ``port_in_use``, ``stop_all``,
                        ``install_signal_handlers``
* ``servers.proctable`` the process table through psutil: start times, states, group
                        members, ``signal_process`` (checked, through a pidfd)
* ``servers.vllm``      ``vllm_argv_env``, the vLLM module and backend, ``VLLM_PORT`` blocks,
                        the KV-cache info parsers
* ``servers.env``       what every tenant's environment gets (``base_env``, ``REPO_ROOT``)
* ``servers.launch``    ``start_tenant`` -> ``RunningTenant``, ``encoder_argv_env``,
                        ``read_kv_cache_info``, ``dead_tenants``
* ``servers.mps``       ``MpsDaemon``: a CUDA MPS control daemon for ``sharing: mps``
* ``servers.encoder``   the embeddings server (``python -m servers.encoder``, ``create_app``)
* ``servers.errors``    ``ServerError`` and its subclasses
"""
