# The held-out eval of the second leave-one-out arm (train-no-pairs.toml: mnist1d+text, pairs never seen), on pairs,
# beside pairs' controls (wait, the heuristic, the best grid schedule) and the in-task shipped policy (free-levers stage 2).
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; C=$R/no-pairs/policy.pt; F=docs/results/tamiyo/free-levers/stage2/policy.pt
esper eval --task pairs --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:transfer:$C,recipe:greedy:transfer:$C,transfer:$C,heuristic,wait,schedule:docs/schedules/grid/conv_heavy-fast-1slot.toml,greedy:$F \
  --reference greedy:transfer:$C --out $R/eval-pairs-heldout
