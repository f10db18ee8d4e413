"""Figure: what one epoch costs as the work grows (the scaling table of docs/scale.md).

Each case is a ``MorphoEnv`` on its task's default sizes, stepped with WAIT
(the host alone: training, validation, telemetry, the observation), one
intra-op thread. Every case is built once and warmed up by one epoch; then
each repeat steps every case one epoch, in alternating order, and each
case's CPU seconds are divided by the default case's in the same repeat. The
ratio is the median of those per-repeat ratios.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable

import attrs

from bench.fixtures import BUILTIN_LEVERS
from bench.timing import Row, Settings
from esper_kernel.compose.registry import Selection
from esper_kernel.data.generated import make_sequences
from esper_kernel.data.tasks import TaskData
from esper_kernel.episode.env import MorphoEnv, build_registry, load_task
from esper_kernel.infra.telemetry import null_log
from esper_kernel.settings.config import EnvConfig

KEY = "scale"


@attrs.frozen
class Case:
    label: str
    config: EnvConfig
    #: Builds the task instead of ``load_task`` (a sequence length no flag sets).
    task: Callable[[EnvConfig], TaskData] | None = None


def _sequences(seq_len: int) -> Callable[[EnvConfig], TaskData]:
    return lambda _cfg: make_sequences(seed=0, seq_len=seq_len)


def cases(quick: bool) -> list[Case]:
    small = {"train_size": 64, "val_size": 32} if quick else {}
    base = EnvConfig(**small)  # type: ignore[arg-type]
    out = [
        Case("default: pairs, width 8, 3 slots, batch 64", base),
        Case("width 16 (x2)", attrs.evolve(base, width=16)),
        Case("width 32 (x4)", attrs.evolve(base, width=32)),
        Case("6 slots", attrs.evolve(base, slots=6)),
        Case("batch 32", attrs.evolve(base, batch_size=32)),
        Case("batch 128", attrs.evolve(base, batch_size=128)),
        Case("task shapes", attrs.evolve(base, task="shapes")),
        Case("task sequences (seq_len 32)", attrs.evolve(base, task="sequences")),
        Case("sequences, seq_len 16", attrs.evolve(base, task="sequences"), _sequences(16)),
        Case("sequences, seq_len 64", attrs.evolve(base, task="sequences"), _sequences(64)),
    ]
    if importlib.util.find_spec("mnist1d") is not None:
        out.append(Case("task mnist1d", attrs.evolve(base, task="mnist1d")))
    if quick:
        return out[:2] + out[7:8]
    return out


def _env(case: Case, epochs: int) -> MorphoEnv:
    cfg = attrs.evolve(case.config, epochs=epochs)
    task = case.task(cfg) if case.task is not None else load_task(cfg, 0)
    env = MorphoEnv(cfg, build_registry(cfg, Selection(only=BUILTIN_LEVERS)), task, null_log())
    env.reset(0)
    return env


def _epoch(env: MorphoEnv) -> float:
    wait = env.registry.space.encode([{"op": "wait"}])[0]
    t0 = time.process_time()
    env.step(wait)
    return time.process_time() - t0


def run(settings: Settings) -> list[Row]:
    repeats = 1 if settings.quick else 5
    chosen = cases(settings.quick)
    envs = [_env(c, repeats + 1) for c in chosen]
    for env in envs:
        _epoch(env)  # warm-up
    cpu: list[list[float]] = [[] for _ in chosen]
    for r in range(repeats):
        order = list(range(len(chosen))) if r % 2 == 0 else list(range(len(chosen)))[::-1]
        for i in order:
            cpu[i].append(_epoch(envs[i]))
    rows = []
    for case, env, times in zip(chosen, envs, cpu, strict=True):
        ratio = statistics.median(t / d for t, d in zip(times, cpu[0], strict=True))
        rows.append(
            Row(
                key=KEY,
                figure=f"epoch cost, {case.label}",
                measured=f"{statistics.median(times) * 1e3:.0f} ms CPU, {env.param_count():,} params",
                baseline=f"{statistics.median(cpu[0]) * 1e3:.0f} ms (default)",
                ratio=ratio,
                target="reported",
                passed=None,
                notes=(
                    f"{env.task.n_train} train / {env.task.n_val} val examples"
                    + (f", seq_len {env.task.seq_len}" if env.task.seq_len else ""),
                ),
            )
        )
    return rows
