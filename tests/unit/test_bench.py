"""`runyard bench`'s hand-written baselines: the plain loop and native DDP really train.

The benchmark's ratios mean something only if its baselines learn the same task; the
runyard variants are the ordinary training path, tested elsewhere.
"""

from __future__ import annotations

from runyard.bench import experiment, native_ddp, plain_loop


# MNIST-1D's reference CNN after 3 epochs: val acc ~0.5 either way; chance is 0.1.
def test_plain_loop_and_native_ddp_learn_the_reference_workload():
    exp, splits = experiment("reference")
    exp = exp.model_copy(update={"recipe": exp.recipe.model_copy(update={"epochs": 3})})
    plain, ddp = plain_loop("reference", exp, splits), native_ddp("reference", exp, splits, workers=2)
    print(plain, ddp, sep="\n")
    for timing in (plain, ddp):
        assert timing.epochs == 3 and timing.val_acc > 0.3, timing
        assert 0 < timing.startup_s < timing.wall_s and timing.per_epoch_s > 0
