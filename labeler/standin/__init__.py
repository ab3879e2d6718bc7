"""A real, local OpenAI-compatible server for tests and benchmarks (no model, no network).

It speaks enough of the API for the official ``openai`` client: ``POST /v1/chat/completions``
(with ``usage`` and, when asked, ``logprobs``), ``GET /v1/models``, and the Batch API
(``/v1/files``, ``/v1/batches``). What it answers is scripted:

- ``policy`` — "hash": a deterministic label from a hash of the request's images (the same
  images always get the same answer, re-asks included); "first"/"second": always prefers the video
  shown first/second (pure position bias); "tie"; "garbage": prose without JSON; "sharpness": decodes
  the frames and prefers the side with the higher mean Laplacian variance (a crude but real judge).
- Layout rule for "sharpness": a request whose images carry a bright vertical stripe at their exact
  centre (labeler.media.images.side_by_side's gap) is 'side-by-side' and each image is split at the stripe
  into first | second; otherwise it is 'separate' and the first half of the images is the first video.
- ``faults`` — a queue applied to the next requests, one each: ``{"status": 429, "retry_after": 0.05}``,
  ``{"status": 500}``, ``{"hang": 5.0}`` (sleep before answering), ``{"hang": "until_released"}``
  (answer only after ``/_control {"release_hangs": true}`` or a reset: a client timeout that fires
  whatever the machine's load), ``{"garbage": true}``; ``rules`` —
  per-content faults applied every time: ``{"match": "text in the prompt", "status": 500}`` or
  ``{"image_hash": image_digest(urls), "status": 500}`` (one segment's images; the log shows the hash).
- ``latency_ms`` per request and ``max_concurrency`` (requests beyond it queue, like a GPU server).
- ``supports_logprobs`` / ``supports_response_format`` = False make it reject those parameters with
  a 400, like some real endpoints; ``api_key`` makes it demand that bearer key (401 otherwise);
  ``models`` restricts the model names it knows (404 otherwise).

Counters (``GET /_stats``): requests, answers per canonical body hash (so a test can assert that no
request was answered twice), faults served, the highest concurrency seen. ``POST /_control``
changes any setting at run time (``reset: true`` also clears counters, log, faults and rules);
``GET /_requests`` returns recent request bodies with images replaced by their hashes.
``usage.prompt_tokens`` uses labeler.judges.pricing.chat_input_tokens, the judges' own estimator.

Run it in-process with ``StandinServer`` or as ``python -m labeler.standin --port 0`` (prints its URL).
"""

from labeler.standin.app import create_app
from labeler.standin.behaviour import StandinConfig, canonical_hash, image_digest
from labeler.standin.runners import StandinServer, main, start_standin_process
from labeler.standin.state import StandinState

__all__ = [
    "StandinConfig",
    "StandinServer",
    "StandinState",
    "canonical_hash",
    "create_app",
    "image_digest",
    "main",
    "start_standin_process",
]
