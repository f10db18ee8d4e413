# D's second PPO seed (train-no-text-seed1.toml, reading sizes), greedy on text, beside D, E, E2 and text's controls,
# whose episodes are replayed from evals-10.sh's journal.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; D2=$R/no-text-seed1/policy.pt
mkdir -p $R/eval-text-heldout-seed1
[ -f $R/eval-text-heldout-seed1/episodes.jsonl ] || cp $R/eval-text-heldout-sign-seed1/episodes.jsonl $R/eval-text-heldout-seed1/
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:transfer:$D2,heuristic,wait,greedy:transfer:$R/no-text/policy.pt,greedy:transfer:$R/no-text-sign/policy.pt,greedy:transfer:$R/no-text-sign-seed1/policy.pt \
  --reference greedy:transfer:$D2 --out $R/eval-text-heldout-seed1
