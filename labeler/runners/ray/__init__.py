"""Scale out: label a manifest on a Ray cluster (``python -m labeler.batch ... --ray``).

``options`` (the CLI flags, no ray import), ``worker`` (the Ray Data actor), ``ray_runner`` (the
driver), ``cache_policy`` (node-local judgment caches). See docs/scale.md.
"""
