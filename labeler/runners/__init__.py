"""Runners: what drives the engine over a manifest.

``local`` (one process, asyncio), ``ray`` (a Ray cluster) and ``batch_api`` (OpenAI's Batch API,
half price, up to 24 h) sit side by side; each uses the engine's public API only.
"""
