# E3 (train-no-text-sign-seed2.toml: the text hold-out reading signs, PPO seed 2) under family: on text, beside
# evals-12.sh's controls (replayed from eval-text-family/'s journal, copied into eval-text-family-e3/). Decided before training: E3 minus the heuristic and
# minus wait, return and final accuracy, seeds 9301-9320, 20 epochs, paired, 95% t-intervals.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask
mkdir -p $R/eval-text-family-e3
[ -f $R/eval-text-family-e3/episodes.jsonl ] || cp $R/eval-text-family/episodes.jsonl $R/eval-text-family-e3/
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:family:$R/no-text-sign-seed2/policy.pt,heuristic,wait --reference heuristic --out $R/eval-text-family-e3
