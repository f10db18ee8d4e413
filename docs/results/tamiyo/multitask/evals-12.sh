# family: on every hold-out arm whose policy file is committed, on the task it never saw (stop 43).
# A blueprint new to a policy (conv1d on text, wide and dilated4 on mnist1d, conv_light/conv_heavy/depthwise on
# pairs) is drawn with the probability the policy gave its family's blueprints missing there
# (esper_kernel/compose/names.py FAMILIES, esper_kernel/tamiyo/fit.py); with transfer: it was never drawn.
#
# Decided before running: per arm, greedy family:P minus the heuristic and minus wait (the "Done when" rows),
# minus greedy transfer:P (what families change) and minus the task's grid best, in return and final accuracy,
# seeds 9301-9320, 20 epochs, paired, 95% t-intervals. Eight arms are tried (text: D, D2, E, E2; mnist1d: F, F2,
# B512, shipped as esper_kernel/pretrained/text.pt; pairs: no-pairs), so each result is also read at the Bonferroni level for 8 (a 99.375% interval).
# The controls' episodes are replayed from the journals they were played in; two seeds of heuristic and wait
# per task are played afresh in $R/replay-check-12 to show this machine replays them to the last bit.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; B2=esper_kernel/pretrained/text.pt
for t in text mnist1d pairs; do mkdir -p $R/eval-$t-family; done
[ -f $R/eval-text-family/episodes.jsonl ] || cp $R/eval-text-heldout-sign/episodes.jsonl $R/eval-text-family/
[ -f $R/eval-mnist1d-family/episodes.jsonl ] || cp $R/eval-mnist1d-heldout-sign-seed1/episodes.jsonl $R/eval-mnist1d-family/
[ -f $R/eval-pairs-family/episodes.jsonl ] || cp $R/eval-pairs-heldout/episodes.jsonl $R/eval-pairs-family/
fam() { for p in "$@"; do printf 'greedy:family:%s,' "$R/$p/policy.pt"; done; }
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies $(fam no-text-sign no-text-sign-seed1 no-text no-text-seed1)heuristic,wait,schedule:docs/results/text/grid/attention-fast-1slot.toml \
  --reference heuristic --out $R/eval-text-family
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies $(fam no-mnist1d-sign no-mnist1d-sign-seed1)greedy:family:$B2,heuristic,wait,schedule:docs/schedules/grid-mnist1d/wide-fast-1slot.toml \
  --reference heuristic --out $R/eval-mnist1d-family
esper eval --task pairs --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies $(fam no-pairs)heuristic,wait,schedule:docs/schedules/grid/conv_heavy-fast-1slot.toml \
  --reference heuristic --out $R/eval-pairs-family
esper eval --config docs/results/text/text.toml --epochs 20 --seeds 9301-9302 --workers 2 --policies heuristic,wait --out $R/replay-check-12/text
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9301-9302 --workers 2 --policies heuristic,wait --out $R/replay-check-12/mnist1d
esper eval --task pairs --epochs 20 --seeds 9301-9302 --workers 2 --policies heuristic,wait --out $R/replay-check-12/pairs
