# The second PPO seed of the text hold-out reading signs (train-no-text-sign-seed1.toml), on text, beside E (seed 0),
# D and text's controls, whose episodes are replayed from evals-6.sh's journal.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; E2=$R/no-text-sign-seed1/policy.pt; E=$R/no-text-sign/policy.pt; D=$R/no-text/policy.pt
mkdir -p $R/eval-text-heldout-sign-seed1
[ -f $R/eval-text-heldout-sign-seed1/episodes.jsonl ] || cp $R/eval-text-heldout-sign/episodes.jsonl $R/eval-text-heldout-sign-seed1/
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:transfer:$E2,recipe:greedy:transfer:$E2,transfer:$E2,heuristic,wait,schedule:docs/results/text/grid/attention-fast-1slot.toml,greedy:transfer:$E,greedy:transfer:$D \
  --reference greedy:transfer:$E2 --out $R/eval-text-heldout-sign-seed1
