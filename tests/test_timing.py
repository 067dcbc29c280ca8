"""The one latency summary (stream reports, bench, prune) and the timed loop."""

from edgeseg.timing import summarize, time_calls


def test_summary_percentiles_match_a_hand_computed_sample():
    s = summarize(list(range(1, 101)))  # 1..100 ms
    # linear interpolation at rank q/100 * (n - 1): p50 = 50.5, p90 = 90.1, p99 = 99.01
    assert (s["p50"], s["p90"], s["p99"]) == (50.5, 90.1, 99.01)
    assert (s["mean"], s["min"], s["max"], s["samples"]) == (50.5, 1.0, 100.0, 100)
    assert s["throughput_fps"] == round(1000 / 50.5, 3)
    assert summarize(range(1, 101), (50, 95))["p95"] == 95.05


def test_no_samples_summarise_to_zeros():
    s = summarize([], (50, 99))
    assert s == {
        "p50": 0.0,
        "p99": 0.0,
        "mean": 0.0,
        "min": 0.0,
        "max": 0.0,
        "throughput_fps": 0.0,
        "samples": 0,
    }


def test_time_calls_runs_warmup_untimed():
    calls = []
    samples = time_calls(lambda: calls.append(1), warmup=3, iters=5)
    assert len(calls) == 8 and len(samples) == 5 and all(t >= 0 for t in samples)
