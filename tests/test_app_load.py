"""A bounded load test of the real service process on loopback: 200 /label requests, 16 at a
time, with the embedded metrics judge: 100 judged afresh (uncached), then 100 answered from the
judgment cache. No request may fail and the server's memory must not keep growing; the throughput
and latency it prints are for the closing notes (no timed assertions: CI machines vary)."""

from __future__ import annotations

import pytest

from labeler.media import video
from tests.conftest import textured_frames
from tests.service_helpers import metric_value, mixed_label_bodies, run_load, running_service

REQUESTS, CONCURRENCY = 200, 16
# Generous: allocator noise and warm caches are fine; a per-request leak of even 1 MiB is not.
MAX_RSS_GROWTH_KIB = 100 * 1024


@pytest.mark.slow
def test_load_cached_and_uncached(tmp_path):
    media = tmp_path / "media"
    pairs = []
    for k in range(4):  # 2 s at 24 fps, 96x128: two segments of 8 sampled frames per pair
        video.write_video(media / f"a{k}.mp4", textured_frames(48, h=96, w=128, seed=k), 24.0)
        video.write_video(media / f"b{k}.mp4", textured_frames(48, h=96, w=128, seed=k, motion=3), 24.0)
        pairs.append((f"a{k}.mp4", f"b{k}.mp4"))
    args = ["--media-root", str(media), "--cache-dir", str(tmp_path / "cache"), "--judge", "metrics"]
    with running_service(args) as svc:
        # Warm-up: imports, first decodes, and the repeated prompts of every pair go into the cache.
        warm_up = run_load(
            svc.base_url, mixed_label_bodies(48, pairs, tag="warm-up"), concurrency=CONCURRENCY
        )
        assert warm_up.errors == 0, warm_up.failures[:3]
        rss_before = svc.rss_kib()
        uncached = mixed_label_bodies(REQUESTS // 2, pairs, cached_share=0.0, tag="load")
        cached = mixed_label_bodies(REQUESTS // 2, pairs, cached_share=1.0)
        results = {
            name: run_load(svc.base_url, bodies, concurrency=CONCURRENCY)
            for name, bodies in (("uncached", uncached), ("cached", cached))
        }
        rss_after = svc.rss_kib()
        with svc.client() as client:
            metrics = client.get("/metrics").text
    print(f"\nservice load test, metrics judge, {CONCURRENCY} concurrent, loopback:")
    for name, result in results.items():
        print(f"  {name:>8}: {result.summary()}")
    print(f"  server RSS {rss_before / 1024:.1f} MiB -> {rss_after / 1024:.1f} MiB")
    for result in results.values():
        assert result.errors == 0, result.failures[:3]
        assert len(result.latencies) == REQUESTS // 2
    assert rss_after - rss_before < MAX_RSS_GROWTH_KIB
    assert metric_value(metrics, "densepref_in_flight") == 0  # every admitted job was released
    # Each cached request answers 2 segments x 2 orders from the cache.
    assert metric_value(metrics, "densepref_cache_hits_total") >= 4 * REQUESTS // 2
