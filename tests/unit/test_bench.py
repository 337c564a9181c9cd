"""`runyard bench`'s hand-written baselines really train, on the threads they are given,
and its statistics say when the repeats are noise.

The benchmark's ratios mean something only if its baselines learn the same task on the
same number of threads as the runyard worker; the runyard variants are the ordinary
training path, tested elsewhere. No test here asserts a time or a speed ratio: those
are what `runyard bench` measures.
"""

from __future__ import annotations

import pytest
import torch

from runyard.bench import (
    Stats,
    Timing,
    experiment,
    measure,
    native_ddp,
    noisy,
    plain_lightning,
    plain_loop,
    stats,
    summarise,
    targets,
    with_epochs,
)


@pytest.fixture(scope="module")
def reference():
    return experiment("reference")


# MNIST-1D's reference CNN after 3 epochs: val acc ~0.5 either way; chance is 0.1.
def test_plain_loop_and_native_ddp_learn_the_reference_workload(reference):
    exp, splits = reference
    exp = with_epochs(exp, 3)
    plain = plain_loop("reference", exp, splits, threads=1)
    ddp = native_ddp("reference", exp, splits, workers=2, threads=1)
    print(plain, ddp, sep="\n")
    for timing in (plain, ddp):
        assert timing.epochs == 3 and timing.val_acc > 0.3, timing
        assert timing.threads == 1
        assert 0 < timing.startup_s < timing.wall_s and timing.first_epoch_s > 0 and timing.per_epoch_s > 0
        assert timing.startup_s + timing.first_epoch_s + 2 * timing.per_epoch_s + timing.end_s == pytest.approx(
            timing.wall_s)


@pytest.mark.parametrize("baseline", [plain_loop, plain_lightning])
@pytest.mark.parametrize("threads", [1, 2])
def test_baselines_train_on_the_threads_asked_and_restore_them(reference, baseline, threads):
    exp, splits = reference
    before = torch.get_num_threads()
    timing = baseline("reference", with_epochs(exp, 1), splits, threads=threads)
    assert timing.threads == threads  # read while training, not the number asked
    assert torch.get_num_threads() == before


def test_stats_best_median_spread():
    s = stats([12.0, 10.0, 11.0])
    assert (s.best, s.median, s.worst, s.n) == (10.0, 11.0, 12.0, 3)
    assert s.spread == pytest.approx(2 / 11)
    assert stats([4.0, 5.0]).median == 4.5
    assert stats([3.0]).spread is None  # one run says nothing about its noise
    with pytest.raises(ValueError):
        stats([])


def test_noisy_flags_a_spread_over_the_limit():
    # The bench's motivating case: plain-loop walls of 4.0, 11.0 and 13.4 s.
    assert noisy(stats([4.0, 11.0, 13.4]))
    assert not noisy(stats([10.0, 10.5, 11.0]))  # ~10%
    assert noisy(stats([10.0, 10.5, 11.0]), limit=0.05)
    assert not noisy(Stats(3.0, 3.0, 3.0, None, 1))


def _t(variant: str, wall: float, per_epoch: float, round: int = 0) -> Timing:
    return Timing("w", variant, wall, 1.0, per_epoch, per_epoch, 0.1, 5, 1000, 0.5, 2, round)


def test_summarise_groups_repeats_skips_warm_ups_and_takes_ratios_against_the_plain_loop():
    timings = [
        _t("a plain loop", 99.0, 9.0, round=-1),  # warm-up: not counted
        _t("a plain loop", 4.0, 0.2), _t("c runyard", 20.0, 0.3),
        _t("a plain loop", 5.0, 0.2), _t("c runyard", 30.0, 0.3),
        _t("a plain loop", 6.0, 0.2), _t("c runyard", 22.0, 0.3),
    ]
    a, c = summarise(timings)
    assert (a["variant"], a["repeats"], a["wall_s"]["best"], a["wall_s"]["median"]) == ("a plain loop", 3, 4.0, 5.0)
    assert a["noisy"] == ["wall_s"] and c["noisy"] == ["wall_s"]  # 40% and ~45%
    assert c["wall_ratio"] == {"best": 5.0, "median": pytest.approx(22.0 / 5.0)}
    assert c["per_epoch_ratio"]["median"] == pytest.approx(1.5)
    assert c["throughput"] == pytest.approx(1000 / 0.3)
    assert not summarise([_t("a plain loop", 4.0, 0.2), _t("a plain loop", 4.1, 0.2)])[0]["noisy"]


def test_measure_warms_every_variant_up_then_interleaves_the_rounds(reference):
    exp, splits = reference
    calls = []

    def variant(name):
        def run(workload, e, s):
            calls.append((name, e.recipe.epochs))
            return _t(name, 1.0, 0.1)
        return run

    timings = measure("w", exp, splits, [variant("a"), variant("b"), variant("c")], repeat=2)
    assert calls == [("a", 1), ("b", 1), ("c", 1), ("a", 20), ("b", 20), ("c", 20), ("a", 20), ("b", 20), ("c", 20)]
    assert [t.round for t in timings] == [-1, -1, -1, 0, 0, 0, 1, 1, 1]


def test_targets_compare_runyard_with_the_plain_loop_plus_5_s_and_say_the_warm_path_is_missing():
    timings = [_t("c runyard 1 worker", 25.0, 0.3, round=-1)]
    timings[0].startup_s = 20.0
    for r in range(2):
        timings += [_t("a plain loop", 4.0, 0.2, r), _t("c runyard 1 worker", 12.0, 0.3, r),
                    _t("d runyard 2 workers", 14.0, 0.4, r), _t("e native DDP 2 processes", 6.0, 0.2, r)]
    for t in timings:
        t.workload = "reference"
    rows = summarise(timings)
    warm, ray_up, cold, two, gate = targets(rows, [t for t in timings if t.round < 0])
    assert warm["met"] is None and "not yet" in warm["note"]
    assert ray_up["limit_s"]["median"] == pytest.approx(1.3 * 4.0 + 5) and ray_up["met"] is False
    assert cold["measured"]["median"] == pytest.approx(20.0 + 12.0 - 1.0)  # cold start-up + training and end
    assert two["measured"]["median"] == pytest.approx(0.75) and gate["measured"]["median"] == pytest.approx(2.0)


def test_run_writes_every_repeat_and_the_summary(monkeypatch, tmp_path, reference):
    """The report's plumbing, with stand-in variants: no training."""
    import json

    from rich.console import Console

    import runyard.bench as bench

    def fake(name, wall):
        return lambda w, e, s: Timing(w, name, wall, 1.0, 0.2, 0.1, 0.1, e.recipe.epochs, 4000, 0.5, 2)

    exp, _ = reference  # the data is not used: the variants are stand-ins
    monkeypatch.setattr(bench, "experiment", lambda w: (exp, None))
    monkeypatch.setattr(bench, "variants", lambda cpus, store: [fake("a plain loop", 4.0), fake("c runyard", 9.0)])
    out = tmp_path / "metrics" / "bench.json"
    bench.run(["reference"], out, Console(width=140, record=True), repeat=2)
    report = json.loads(out.read_text())
    assert [(t["variant"], t["round"]) for t in report["repeats"]] == [
        ("a plain loop", 0), ("c runyard", 0), ("a plain loop", 1), ("c runyard", 1)]
    assert len(report["warmup"]) == 2 and report["repeat"] == {"reference": 2}
    assert report["threads"]["a"] == report["threads"]["c"] == report["cpus"]
    assert [r["variant"] for r in report["summary"]] == ["a plain loop", "c runyard"]


def test_the_pipeline_bench_splits_each_stage_into_fits_and_the_rest():
    from runyard.bench.pipeline import breakdown

    stages = [("prepare@a", 0, 2), ("train@x", 2, 12), ("train@y", 12, 20), ("evaluate@x", 20, 21)]
    fits = [(4, 11), (13, 19), (14, 15)]  # the last overlaps the one before: counted once
    rows = {r["stage"]: r for r in breakdown(stages, fits)}
    assert rows["train"] == {"stage": "train", "count": 2, "wall_s": 18, "fit_s": 13}
    assert rows["prepare"]["fit_s"] == rows["evaluate"]["fit_s"] == 0
