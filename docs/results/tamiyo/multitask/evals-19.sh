# S2 (train-all-sign-seed1.toml: the three tasks, reading signs, PPO seed 1) on each of its training tasks.
# Decided before training: greedy S2 minus recipe:greedy:S2 (the "beats its own recipe" row), and minus the
# heuristic and each task's grid best, in return and final accuracy, seeds 9301-9320, 20 epochs, paired, 95%
# t-intervals. The controls are replayed from evals-7.sh's journals (mnist1d's from evals-14.sh's, played on this
# machine); only the heuristic and the grid best are kept in the copy.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; S2=$R/all-sign-seed1/policy.pt
mkdir -p $R/all-sign-seed1
[ -f $S2 ] || cp runs/multitask-all-sign-seed1/policy.pt runs/multitask-all-sign-seed1/train_summary.json $R/all-sign-seed1/
copy() {  # the task's heuristic and grid best from journal $3, nothing else
  mkdir -p $R/eval-$1-sign-seed1; [ -f $R/eval-$1-sign-seed1/episodes.jsonl ] || python -c "
import json
lines = open('$R/$3/episodes.jsonl').readlines()
keep = [lines[0]] + [l for l in lines[1:] if json.loads(l).get('policy') in ('heuristic', '$2')]
open('$R/eval-$1-sign-seed1/episodes.jsonl', 'w').writelines(keep)"
}
GT=schedule:docs/results/text/grid/attention-fast-1slot.toml; GM=schedule:docs/schedules/grid-mnist1d/wide-fast-1slot.toml
GP=schedule:docs/schedules/grid/conv_heavy-fast-1slot.toml
copy text $GT eval-text-sign; copy mnist1d $GM eval-mnist1d-family-here; copy pairs $GP eval-pairs-sign
esper eval --task pairs --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$S2,recipe:greedy:$S2,$GP,heuristic --reference greedy:$S2 --out $R/eval-pairs-sign-seed1
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$S2,recipe:greedy:$S2,$GM,heuristic --reference greedy:$S2 --out $R/eval-mnist1d-sign-seed1
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$S2,recipe:greedy:$S2,$GT,heuristic --reference greedy:$S2 --out $R/eval-text-sign-seed1
