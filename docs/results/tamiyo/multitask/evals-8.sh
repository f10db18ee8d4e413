# The held-out eval of the mnist1d hold-out that reads contribution signs (train-no-mnist1d-sign.toml: pairs+text,
# mnist1d never seen), on mnist1d, beside mnist1d's controls, whose episodes are replayed from evals-2.sh's journal.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; M=$R/no-mnist1d-sign/policy.pt
mkdir -p $R/eval-mnist1d-heldout-sign
[ -f $R/eval-mnist1d-heldout-sign/episodes.jsonl ] || cp $R/eval-mnist1d/episodes.jsonl $R/eval-mnist1d-heldout-sign/
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:transfer:$M,recipe:greedy:transfer:$M,transfer:$M,heuristic,wait,schedule:docs/schedules/grid-mnist1d/wide-fast-1slot.toml \
  --reference greedy:transfer:$M --out $R/eval-mnist1d-heldout-sign
