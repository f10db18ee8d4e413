# The held-out eval of the third leave-one-out arm (train-no-text.toml: pairs+mnist1d, text never seen), on text,
# beside text's controls (wait, the heuristic, the best grid schedule) and the in-task shipped policy for text
# (B512 = esper_kernel/pretrained/text.pt). Every episode is played here, in a fresh directory: no journal from
# another machine is replayed (docs/report.md, Same config, same numbers).
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; D=$R/no-text/policy.pt; B2=esper_kernel/pretrained/text.pt
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:transfer:$D,recipe:greedy:transfer:$D,transfer:$D,heuristic,wait,schedule:docs/results/text/grid/attention-fast-1slot.toml,greedy:$B2 \
  --reference greedy:transfer:$D --out $R/eval-text-heldout
