"""The tenants: model presets, server processes, vLLM launching, the encoder server.

Imports stay light here (no torch, no vLLM); the pieces:

* ``servers.spec``      tenant specs (``VllmTenant``, ``EncoderTenant``)
* ``servers.presets``   ``resolve_model``, ``model_config``, ``build_preset``, ``list_presets``
* ``servers.process``   ``ServerProcess`` (own process group, log, health, stop),
                        ``free_port``, ``port_in_use``, ``stop_all``,
                        ``install_signal_handlers``
* ``servers.launch``    ``start_tenant`` -> ``RunningTenant``, ``vllm_argv_env``,
                        ``encoder_argv_env``, ``read_kv_cache_info``, ``dead_tenants``
* ``servers.encoder``   the embeddings server (``python -m servers.encoder``, ``create_app``)
* ``servers.errors``    ``ServerError`` and its subclasses
"""
