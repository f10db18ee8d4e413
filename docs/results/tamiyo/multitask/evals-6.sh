# The held-out eval of the text hold-out that reads contribution signs (train-no-text-sign.toml: pairs+mnist1d,
# text never seen), on text, beside text's controls. The controls' episodes (heuristic, wait, the best grid
# schedule, B512) are replayed from eval-text-heldout's journal, played on this kind of machine in stop 37.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; E=$R/no-text-sign/policy.pt; D=$R/no-text/policy.pt; B2=esper_kernel/pretrained/text.pt
mkdir -p $R/eval-text-heldout-sign
[ -f $R/eval-text-heldout-sign/episodes.jsonl ] || cp $R/eval-text-heldout/episodes.jsonl $R/eval-text-heldout-sign/
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:transfer:$E,recipe:greedy:transfer:$E,transfer:$E,heuristic,wait,schedule:docs/results/text/grid/attention-fast-1slot.toml,greedy:transfer:$D,greedy:$B2 \
  --reference greedy:transfer:$E --out $R/eval-text-heldout-sign
