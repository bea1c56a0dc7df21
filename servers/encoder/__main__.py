"""``python -m servers.encoder``: load the model, warm it up, serve it with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servers.encoder.app import EncoderSettings
    from servers.encoder.model import EncoderModel

log = logging.getLogger("servers.encoder")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m servers.encoder",
        description="OpenAI-compatible embeddings server (sentence-transformers) for cotenant.",
    )
    p.add_argument("--model", required=True, help="sentence-transformers folder")
    p.add_argument("--served-name", required=True, help="the `model` requests must name")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-batch", type=int, default=64, help="largest micro-batch (items)")
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        help="how long the oldest waiting item waits for others",
    )
    p.add_argument("--max-queue", type=int, default=4096, help="queued items before 503")
    p.add_argument("--max-items", type=int, default=2048, help="items per request")
    p.add_argument("--max-body-mib", type=float, default=16.0, help="request body limit")
    p.add_argument(
        "--memory-share",
        type=float,
        default=None,
        help="fraction of GPU memory (torch.cuda.set_per_process_memory_fraction)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY on /v1")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="build the model from config.json with random weights (shape presets)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --random-weights")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    for name in ("max_batch", "max_queue", "max_items", "port"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.batch_window_ms < 0:
        p.error("--batch-window-ms must be >= 0")
    if args.memory_share is not None and not 0 < args.memory_share <= 1:
        p.error("--memory-share must be in (0, 1]")
    if args.api_key is None:
        args.api_key = os.environ.get("COTENANT_ENCODER_API_KEY") or None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    import uvicorn

    from servers.encoder.app import create_app

    transformers.logging.set_verbosity_error()  # no "sequence longer than" per request
    app = create_app(_load(args), _settings(args))
    log.info("serving %s on http://%s:%d", args.served_name, args.host, args.port)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


def _load(args: argparse.Namespace) -> EncoderModel:
    """The model on its device (within its memory share where that is enforced), warmed up."""
    from servers.encoder.model import limit_cuda_memory, load_encoder, pick_device, warm_up

    t0 = time.monotonic()
    device = pick_device(args.device)
    if args.memory_share is not None:
        if limit_cuda_memory(args.memory_share, device):
            log.info("CUDA memory limited to %.3f of the device", args.memory_share)
        else:
            log.info(
                "memory share %.3f recorded; on %s it is not enforced", args.memory_share, device
            )
    model = load_encoder(
        args.model,
        device=device,
        dtype=args.dtype,
        random_weights=args.random_weights,
        seed=args.seed,
    )
    log.info(
        "loaded %s (%s, %s, dim %d, max_seq_length %d%s) in %.1f s",
        args.model,
        model.device,
        model.dtype,
        model.dim,
        model.max_seq_length,
        ", random weights" if args.random_weights else "",
        time.monotonic() - t0,
    )
    full = device.startswith("cuda")
    t1 = time.monotonic()
    warm_up(model, max_batch=args.max_batch, full=full)
    log.info(
        "warmed up (%s) in %.2f s",
        "largest batch" if full else "small batch",
        time.monotonic() - t1,
    )
    return model


def _settings(args: argparse.Namespace) -> EncoderSettings:
    from servers.encoder.app import EncoderSettings

    return EncoderSettings(
        served_name=args.served_name,
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        max_queue=args.max_queue,
        max_items=args.max_items,
        max_body_bytes=int(args.max_body_mib * 1024 * 1024),
        api_key=args.api_key,
        memory_share=args.memory_share,
    )


if __name__ == "__main__":
    sys.exit(main())
