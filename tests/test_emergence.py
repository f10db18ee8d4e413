"""The emergence tests: a policy's lever choices against uniform-over-legal, from train events and eval journals."""

from __future__ import annotations

import json
import random
from pathlib import Path

from esper_kernel.report.emergence import Pick, choice_tests, eval_picks, train_picks, uniform_over_legal

LEGAL = ("FAST", "STANDARD", "SLOW")


def _picks(n: int, rng: random.Random, bias: str | None = None, blueprint: str = "conv_small") -> list[Pick]:
    out = []
    for _ in range(n):
        legal = LEGAL[: rng.choice((2, 3))]
        choice = bias if bias and rng.random() < 0.6 else rng.choice(legal)
        out.append(Pick("late", blueprint, "s0", "tempo", choice, legal))
    return out


def test_choices_uniform_over_their_legal_sets_are_not_a_preference() -> None:
    # SLOW is legal at only some decisions, so it is picked less than FAST and STANDARD, and never
    # where it is masked: against uniform-over-all that would look like a preference; it is not one.
    test = uniform_over_legal(_picks(400, random.Random(1)))
    assert test is not None and test.n == 400
    assert test.counts["SLOW"] < 0.7 * test.counts["FAST"]
    assert test.p_value > 0.05
    assert abs(sum(test.expected.values()) - 400) < 0.05  # expectations are rounded to 0.01


def test_a_real_preference_is_found_and_named() -> None:
    test = uniform_over_legal(_picks(60, random.Random(2), bias="FAST"))
    assert test is not None and test.p_value < 0.01 and test.preferred() == "FAST"


def test_forced_decisions_and_small_groups_are_left_out() -> None:
    forced = [Pick("late", "conv_small", "s0", "tempo", "FAST", ("FAST",)) for _ in range(50)]
    assert uniform_over_legal(forced) is None
    few = _picks(3, random.Random(3))
    assert uniform_over_legal(forced + few) is None


def test_per_blueprint_rows_find_a_preference_the_pooled_row_dilutes() -> None:
    rng = random.Random(4)
    picks = _picks(80, rng, bias="SLOW", blueprint="conv_small") + _picks(400, rng, blueprint="norm")
    tests = {(t.by, t.group): t for t in choice_tests(picks)}
    assert tests[("blueprint", "conv_small")].p_value < 0.01
    assert tests[("blueprint", "conv_small")].preferred() == "SLOW"
    assert tests[("blueprint", "norm")].p_value > 0.01


def _decision(episode: int, choice: str) -> dict[str, object]:
    return {
        "event": "decision",
        "op": "GERMINATE",
        "episode": episode,
        "choices": {"op": "germinate", "slot": "s1", "blueprint": "conv_small", "tempo": choice},
        "legal": {"slot": ["s1"], "blueprint": ["conv_small"], "tempo": list(LEGAL)},
    }


def test_training_decisions_split_into_early_and_late_thirds() -> None:
    events = [_decision(e, "FAST" if e < 3 else "SLOW") for e in range(9)]
    events.append({"event": "decision", "op": "WAIT", "episode": 9, "choices": {"op": "wait"}})
    picks = train_picks(events)
    assert {(p.phase, p.choice) for p in picks} == {("early", "FAST"), ("late", "SLOW")}
    assert len(picks) == 6 and {p.head for p in picks} == {"tempo"} and picks[0].slot == "s1"


def test_eval_journal_picks_skip_a_line_cut_short(tmp_path: Path) -> None:
    journal = tmp_path / "episodes.jsonl"
    rec = {"choices": {"blueprint": "dilated", "slot": "s0", "tempo": "FAST"}, "legal": {"tempo": list(LEGAL)}}
    rows = [{"schema": "esper.eval/1"}, {"policy": "p.pt", "seed": 0, "result": {"germinate": [rec, rec]}}]
    journal.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"policy": "p.pt", "se')
    picks = eval_picks(journal, "p.pt")
    assert len(picks) == 2 and picks[0] == Pick("eval", "dilated", "s0", "tempo", "FAST", LEGAL)
