"""benchmark_speed.py --quick as a smoke test: it runs and its output has the promised structure.
Speed itself is never asserted in a test; the targets are met (or not) in the benchmark's own run."""

import json

import benchmark_speed


def test_quick_benchmark_writes_json_and_plot(tmp_path):
    json_path, plot_path = tmp_path / "speed.json", tmp_path / "speed.png"
    benchmark_speed.main(benchmark_speed.Args(quick=True, compile=True, json=str(json_path), plot=str(plot_path)))
    results = json.loads(json_path.read_text())
    assert {"device", "torch", "threads", "variants", "eval", "roofline", "edp_vs", "side_by_side", "compiled"} <= set(results)
    assert set(results["edp_vs"]) == {"dql_k5", "dql", "dql_k5_compiled"} and results["side_by_side"]["ratio"] > 0
    assert set(results["compiled"]) == {"dql_k5", "edp_no_ap", "edp"}
    for row in results["compiled"].values():
        assert row["train_ips"] > 0 and row["sample_sps"] > 0 and row["compile_s"] > 0
    assert set(results["compiled"]["edp"]["vs_eager"]) == {"train", "sample"}
    assert set(results["variants"]) == {"dql_k5", "dql", "edp_no_dpm", "edp_no_ap", "edp", "td3bc_ff", "default"}
    for name, row in results["variants"].items():
        extra = {"compiled", "compile_cold_s", "compile_warm_s"} if name == "default" else set()
        assert set(row) == {"train_ips", "sample_sps", "num_diffusion_steps", "schedule", "sampler", "steps"} | extra
        assert row["train_ips"] > 0 and row["sample_sps"] > 0
    default = results["variants"]["default"]  # what a paper run trains with: compiled here (g++ is there)
    assert default["compiled"] and default["compile_cold_s"] > 0 and default["compile_warm_s"] > 0
    assert results["variants"]["edp"]["num_diffusion_steps"] == 1000 and results["variants"]["edp"]["steps"] == 15
    assert set(results["eval"]) == {"vectorized_sps", "sequential_sps"}
    assert set(results["roofline"]) == {"gemm_gflops", "edp_flops_per_iter", "edp_achieved_gflops", "edp_fraction",
                                      "gemm_peak_gflops", "edp_compiled_fraction"}
    assert results["roofline"]["edp_flops_per_iter"] > 0
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unusable_device_is_one_line(capsys):
    import pytest

    for device in ["foo"] + ([] if __import__("torch").cuda.is_available() else ["cuda"]):
        with pytest.raises(SystemExit) as stop:
            benchmark_speed.main(benchmark_speed.Args(quick=True, device=device))
        assert stop.value.code == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: --device {device}:") and "\n" not in error
