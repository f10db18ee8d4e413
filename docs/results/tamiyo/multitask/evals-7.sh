# The in-task evals of the three-task policy that reads contribution signs (train-all-sign.toml), on each of its
# tasks, against its own recipe and each task's controls. The controls' episodes are replayed from earlier journals
# (each copied once into the new directory; stop 37 found them equal to this machine's): text from evals-5.sh,
# mnist1d from evals-2.sh, pairs from evals-4.sh (the committed fixed-levers file's episodes).
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; S=$R/all-sign/policy.pt; BF=$R/no-mnist1d-fixed/policy.pt
for pair in text:text-heldout mnist1d:mnist1d pairs:pairs-bf; do
  t=${pair%%:*}; from=${pair#*:}; mkdir -p $R/eval-$t-sign
  [ -f $R/eval-$t-sign/episodes.jsonl ] || cp $R/eval-$from/episodes.jsonl $R/eval-$t-sign/
done
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$S,recipe:greedy:$S,$S,schedule:docs/results/text/grid/attention-fast-1slot.toml,heuristic,wait,greedy:$BF \
  --reference greedy:$S --out $R/eval-text-sign
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$S,recipe:greedy:$S,$S,schedule:docs/schedules/grid-mnist1d/wide-fast-1slot.toml,heuristic,wait \
  --reference greedy:$S --out $R/eval-mnist1d-sign
esper eval --task pairs --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies greedy:$S,recipe:greedy:$S,$S,schedule:docs/schedules/grid/conv_heavy-fast-1slot.toml,heuristic,wait,greedy:$BF \
  --reference greedy:$S --out $R/eval-pairs-sign
