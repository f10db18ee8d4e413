"""Figure: the counterfactual contribution of one blending seed, per epoch, against a whole forward pass.

Each epoch, every seed in BLENDING or PROBATIONARY gets its contribution
measured: validation accuracy with the seed against accuracy with its alpha
forced to 0. Baseline: that second number from a whole validation pass with
alpha forced to 0 (what the runner did before). Candidate: the pass run from
the seed's slot on, over the slot inputs the epoch's own validation pass kept
(``EpochRunner._validate``), plus what keeping them costs that pass (the
hooks, measured as the validation pass with them against without). Both give
the same accuracy, bit for bit (checked here); the figure is the cost per
blending seed-epoch, for a seed in each slot of the default host.
"""

from __future__ import annotations

import statistics

from bench import fixtures
from bench.timing import Row, Settings, fmt_time, interleaved, median
from esper_kernel.compose.stages import Stage
from esper_kernel.episode.env import EnvConfig, MorphoEnv, load_task
from esper_kernel.grow.training import evaluate

KEY = "counterfactual"
TARGET = 3.0


def _blending_env(cfg: EnvConfig, slot: int) -> MorphoEnv:
    reg = fixtures.registry(cfg)
    env = MorphoEnv(cfg, reg, load_task(cfg, 0), fixtures.NullLog())
    env.reset(0)
    germinate = reg.space.encode([{"op": "germinate", "slot": f"s{slot}", "blueprint": "conv_small"}])[0]
    env.step(germinate)
    lc = env.lifecycle
    seed = lc.seeds[slot]
    assert seed is not None
    for stage in (Stage.TRAINING, Stage.BLENDING):
        if seed.stage is not stage:
            lc._move(seed, stage, env.epoch, "bench")
    lc.slots[slot].set_alpha(0.5)
    env.host.eval()
    return env


def _slot_row(cfg: EnvConfig, slot: int, settings: Settings) -> tuple[Row, float]:
    env = _blending_env(cfg, slot)
    runner, host, task, bs = env.runner, env.host, env.task, cfg.batch_size
    _, acc = runner._validate([slot])
    kept = runner._slot_inputs
    assert kept is not None, "the validation pass kept no slot inputs"
    cached = runner._contribution(slot, Stage.BLENDING, acc)
    runner._slot_inputs = None
    whole = runner._contribution(slot, Stage.BLENDING, acc)
    if cached != whole:
        raise AssertionError(f"slot {slot}: contribution {cached} from the slot on, {whole} from a whole pass")

    def from_slot() -> None:
        runner._slot_inputs = kept
        runner._contribution(slot, Stage.BLENDING, acc)

    def whole_pass() -> None:
        runner._slot_inputs = None
        runner._contribution(slot, Stage.BLENDING, acc)

    t = interleaved(
        {
            "whole": whole_pass,
            "from_slot": from_slot,
            "val_keeping": lambda: runner._validate([slot]),
            "val_plain": lambda: evaluate(host, task, bs),
        },
        settings.heavier(repeats=15, sample_s=0.1),
    )
    keeping = max(0.0, median(t["val_keeping"]) - median(t["val_plain"]))
    new = median(t["from_slot"]) + keeping
    ratio = median(t["whole"]) / new
    row = Row(
        key=KEY,
        figure=f"counterfactual per blending seed-epoch, slot {slot} (conv_small)",
        measured=f"{fmt_time(new)} (from the slot {fmt_time(median(t['from_slot']))} + keeping {fmt_time(keeping)})",
        baseline=fmt_time(median(t["whole"])) + " (whole validation pass)",
        ratio=ratio,
        ratio_text=f"{ratio:.2f}x cheaper",
        target="reported",
        passed=None,
        notes=(f"same contribution bit for bit ({cached:+.4f})",),
    )
    return row, ratio


def run(settings: Settings) -> list[Row]:
    cfg = EnvConfig(train_size=128, val_size=64) if settings.quick else EnvConfig()
    got = [_slot_row(cfg, slot, settings) for slot in range(cfg.slots)]
    ratios = [r for _, r in got]
    mean = statistics.fmean(ratios)
    total = Row(
        key=KEY,
        figure="counterfactual per blending seed-epoch, mean over the slots",
        measured=" / ".join(f"{r:.2f}x" for r in ratios),
        baseline="whole validation pass",
        ratio=mean,
        ratio_text=f"{mean:.2f}x cheaper",
        target=f">= {TARGET:g}x cheaper",
        passed=mean >= TARGET,
    )
    return [*(row for row, _ in got), total]
