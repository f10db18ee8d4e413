# The fixed-levers control BF (train-no-mnist1d-fixed.toml) retrained in stop 36, its policy file committed this time;
# a retrain is not bit-identical to stop 35's (docs/tamiyo.md), so it is evaluated again beside what it is compared with:
# B512 (= esper_kernel/pretrained/text.pt), the heuristic and wait, on pairs and text.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; BF=$R/no-mnist1d-fixed/policy.pt; B2=esper_kernel/pretrained/text.pt
esper eval --task pairs --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$BF,greedy:$B2,heuristic,wait --reference greedy:$BF --out $R/eval-pairs-bf
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$BF,greedy:$B2,heuristic,wait --reference greedy:$BF --out $R/eval-text-bf
