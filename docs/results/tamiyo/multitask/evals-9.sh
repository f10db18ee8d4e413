# The second PPO seed of the mnist1d hold-out reading signs (train-no-mnist1d-sign-seed1.toml), on mnist1d, beside
# F (seed 0) and mnist1d's controls, whose episodes are replayed from evals-8.sh's journal.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; G=$R/no-mnist1d-sign-seed1/policy.pt; M=$R/no-mnist1d-sign/policy.pt
mkdir -p $R/eval-mnist1d-heldout-sign-seed1
[ -f $R/eval-mnist1d-heldout-sign-seed1/episodes.jsonl ] || cp $R/eval-mnist1d-heldout-sign/episodes.jsonl $R/eval-mnist1d-heldout-sign-seed1/
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:transfer:$G,recipe:greedy:transfer:$G,transfer:$G,heuristic,wait,schedule:docs/schedules/grid-mnist1d/wide-fast-1slot.toml,greedy:transfer:$M \
  --reference greedy:transfer:$G --out $R/eval-mnist1d-heldout-sign-seed1
