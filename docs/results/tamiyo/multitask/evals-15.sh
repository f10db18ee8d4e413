# The three-task fixed-levers control (train-all-sign-fixed.toml, X) against S (train-all-sign.toml), greedy, on
# each of the three training tasks, seeds 9301-9320, 20 epochs. Decided before training: S minus X in return and
# final accuracy, paired, 95% t-intervals. Both are played here, on one machine: S's earlier episodes were played
# on machines of another CPU-flags digest, and mnist1d episodes did not replay exactly across them (evals-14.sh).
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; S=$R/all-sign/policy.pt; X=$R/all-sign-fixed/policy.pt
esper eval --task pairs --epochs 20 --seeds 9301-9320 --workers 2 --policies greedy:$S,greedy:$X --reference greedy:$X --out $R/eval-pairs-fixed3
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$S,greedy:$X --reference greedy:$X --out $R/eval-mnist1d-fixed3
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$S,greedy:$X --reference greedy:$X --out $R/eval-text-fixed3
