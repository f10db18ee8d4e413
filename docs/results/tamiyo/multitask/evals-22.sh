# B again: train-no-mnist1d.toml (pairs and text, PPO seed 0) retrained on the current kernel, because B's policy file
# was never committed (it predates 37b4a79). Its first rollout already differs from B's on three of its four pairs
# episodes, so this is a replication, not a copy. B is the one policy here that beat its own recipe (+0.180 on
# pairs, +0.062 on text, in return, stop 33).
# Decided before training ended (2026-12-08): greedy B' minus recipe:greedy:B' on pairs and on text, return and final
# accuracy, seeds 9301-9320, 20 epochs, paired, 95% t-intervals (the "beats its own recipe" row); and minus the
# heuristic and wait on both.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; B=$R/no-mnist1d-again/policy.pt
mkdir -p $R/no-mnist1d-again
[ -f $B ] || cp runs/multitask-no-mnist1d/policy.pt runs/multitask-no-mnist1d/train_summary.json $R/no-mnist1d-again/
esper eval --task pairs --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$B,recipe:greedy:$B,heuristic,wait --reference greedy:$B --out $R/eval-pairs-again
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$B,recipe:greedy:$B,heuristic,wait --reference greedy:$B --out $R/eval-text-again
