# A second prospective test of evals-17.sh's selection rule, on two runs trained after it: train-no-text-seed3.toml
# (D4) and train-no-text-seed4.toml (D5), both reading sizes (the reading of D3, the first test's pick), PPO seeds 3, 4.
# Decided before training (2026-12-08): the rule (highest mean over pairs and mnist1d of the mean greedy return on
# selection seeds 9401-9410) picks one of the two; that pick under family: on text, seeds 9301-9320, 20 epochs,
# minus the heuristic and minus wait, return and final accuracy, paired, 95% t-intervals, is the test. Both runs'
# text rows are reported, and the rule over all nine runs (with evals-17.sh's five and evals-18.sh's two) is printed.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; O=$R/select-text-3; T=$R/eval-text-family-3
for p in no-text-seed3 no-text-seed4; do
  mkdir -p $R/$p; [ -f $R/$p/policy.pt ] || cp runs/multitask-$p/policy.pt runs/multitask-$p/train_summary.json $R/$p/
done
P=greedy:$R/no-text-seed3/policy.pt,greedy:$R/no-text-seed4/policy.pt
mkdir -p $O/pairs $O/mnist1d $T
esper eval --task pairs --epochs 20 --seeds 9401-9410 --workers 2 --policies $P,wait --out $O/pairs
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9401-9410 --workers 2 \
  --policies $P,wait --out $O/mnist1d
python $R/select.py $O/pairs/eval.json $O/mnist1d/eval.json
python $R/select.py $R/select-text/pairs/eval.json $R/select-text/mnist1d/eval.json \
  $R/select-text-new/pairs/eval.json $R/select-text-new/mnist1d/eval.json $O/pairs/eval.json $O/mnist1d/eval.json
# The text controls are replayed from evals-18.sh's journal: only the heuristic and wait rows are copied.
[ -f $T/episodes.jsonl ] || python -c "
import json
lines = open('$R/eval-text-family-new/episodes.jsonl').readlines()
keep = [lines[0]] + [l for l in lines[1:] if json.loads(l).get('policy') in ('heuristic', 'wait')]
open('$T/episodes.jsonl', 'w').writelines(keep)"
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:family:$R/no-text-seed3/policy.pt,greedy:family:$R/no-text-seed4/policy.pt,heuristic,wait \
  --reference heuristic --out $T
