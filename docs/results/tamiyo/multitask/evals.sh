# The held-out evals of the two multi-task arms, each into a copy of the journal that already holds the baselines.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
A=docs/results/tamiyo/multitask/all/policy.pt
B=docs/results/tamiyo/multitask/no-mnist1d/policy.pt
F=docs/results/tamiyo/free-levers/stage2/policy.pt
R=docs/results/tamiyo/multitask
mkdir -p $R/eval-mnist1d $R/eval-text $R/eval-pairs
[ -f $R/eval-mnist1d/episodes.jsonl ] || cp docs/results/tamiyo/transfer-pairs-to-mnist1d/episodes.jsonl $R/eval-mnist1d/
[ -f $R/eval-text/episodes.jsonl ] || cp docs/results/tamiyo/transfer-pairs-to-text/episodes.jsonl $R/eval-text/
[ -f $R/eval-pairs/episodes.jsonl ] || cp docs/results/tamiyo/heldout-9301-free/episodes.jsonl $R/eval-pairs/
G=docs/schedules/grid-mnist1d
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:transfer:$B,recipe:greedy:transfer:$B,greedy:$A,recipe:greedy:$A,greedy:transfer:pairs,schedule:$G/wide-fast-1slot.toml,heuristic,wait \
  --reference greedy:transfer:$B --out $R/eval-mnist1d
T=docs/results/text/grid
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$A,recipe:greedy:$A,greedy:$B,recipe:greedy:$B,greedy:transfer:pairs,schedule:$T/attention-fast-1slot.toml,heuristic,wait \
  --reference greedy:$A --out $R/eval-text
esper eval --task pairs --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$A,recipe:greedy:$A,greedy:$B,recipe:greedy:$B,greedy:$F,schedule:docs/schedules/grid/conv_heavy-fast-1slot.toml,heuristic,wait \
  --reference greedy:$A --out $R/eval-pairs
