# The held-out evals of the longer arms (all-768, no-mnist1d-512) and of the fixed-levers control (no-mnist1d-fixed),
# into the journals evals.sh wrote: the episodes already there (baselines, A, B) are replayed from them, not rerun.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask
A=$R/all/policy.pt; B=$R/no-mnist1d/policy.pt; F=docs/results/tamiyo/free-levers/stage2/policy.pt
A2=$R/all-768/policy.pt; B2=$R/no-mnist1d-512/policy.pt; BF=$R/no-mnist1d-fixed/policy.pt
G=docs/schedules/grid-mnist1d
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:transfer:$B,recipe:greedy:transfer:$B,greedy:$A,recipe:greedy:$A,greedy:transfer:pairs,schedule:$G/wide-fast-1slot.toml,heuristic,wait,greedy:transfer:$B2,recipe:greedy:transfer:$B2,greedy:$A2,recipe:greedy:$A2 \
  --reference greedy:transfer:$B --out $R/eval-mnist1d
T=docs/results/text/grid
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$A,recipe:greedy:$A,greedy:$B,recipe:greedy:$B,greedy:transfer:pairs,schedule:$T/attention-fast-1slot.toml,heuristic,wait,greedy:$A2,recipe:greedy:$A2,greedy:$B2,recipe:greedy:$B2,greedy:$BF \
  --reference greedy:$A --out $R/eval-text
esper eval --task pairs --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$A,recipe:greedy:$A,greedy:$B,recipe:greedy:$B,greedy:$F,schedule:docs/schedules/grid/conv_heavy-fast-1slot.toml,heuristic,wait,greedy:$A2,recipe:greedy:$A2,greedy:$B2,recipe:greedy:$B2,greedy:$BF \
  --reference greedy:$A --out $R/eval-pairs
