# Added after evals-12.sh's text results (so not decided before them): is the family: win on text only "grow
# conv1d"? The text grid's two quickest conv1d schedules, and the open-loop recipes of the two family: arms that
# beat the heuristic (E2 and D), on the same seeds. Their other rows are replayed from eval-text-family/.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; E2=$R/no-text-sign-seed1/policy.pt; D=$R/no-text/policy.pt
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:family:$E2,recipe:greedy:family:$E2,greedy:family:$D,recipe:greedy:family:$D,schedule:docs/results/text/grid/conv1d-fast-1slot.toml,schedule:docs/results/text/grid/conv1d-fast-3slot.toml,heuristic,wait \
  --reference heuristic --out $R/eval-text-family
