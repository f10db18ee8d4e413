# The selection rule of evals-17.sh tested on two runs trained after it was written: train-no-text-seed2.toml
# (D3: sizes, PPO seed 2) and train-no-text-sign-seed3.toml (E4: signs, PPO seed 3).
# Decided before training: the rule (highest mean over pairs and mnist1d of the mean greedy return on 9401-9410)
# picks one of the two; that pick under family: on text, seeds 9301-9320, 20 epochs, minus the heuristic and minus
# wait, return and final accuracy, paired, 95% t-intervals, is the prospective test. Both runs' text rows are
# reported, and the rule over all seven runs (with evals-17.sh's five) is printed too.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; O=$R/select-text-new; T=$R/eval-text-family-new
for p in no-text-seed2 no-text-sign-seed3; do
  mkdir -p $R/$p; cp runs/multitask-$p/policy.pt runs/multitask-$p/train_summary.json $R/$p/
done
P=greedy:$R/no-text-seed2/policy.pt,greedy:$R/no-text-sign-seed3/policy.pt
mkdir -p $O/pairs $O/mnist1d $T
esper eval --task pairs --epochs 20 --seeds 9401-9410 --workers 2 --policies $P,wait --out $O/pairs
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9401-9410 --workers 2 \
  --policies $P,wait --out $O/mnist1d
python $R/select.py $O/pairs/eval.json $O/mnist1d/eval.json
[ -f $T/episodes.jsonl ] || cp $R/eval-text-family/episodes.jsonl $T/
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:family:$R/no-text-seed2/policy.pt,greedy:family:$R/no-text-sign-seed3/policy.pt,heuristic,wait \
  --reference heuristic --out $T
