# mnist1d's controls played afresh beside evals-12.sh's family: rows. Two seeds of heuristic and wait replayed on
# this machine (replay-check-12/mnist1d) differ from the journal evals-12.sh copied them from (played before the
# journal recorded a CPU-flags digest), so those controls were not exactly paired with the family: rows. This
# keeps only the family: rows of that journal and plays heuristic, wait and the grid's best here.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; B2=esper_kernel/pretrained/text.pt; O=$R/eval-mnist1d-family-here
mkdir -p $O
[ -f $O/episodes.jsonl ] || python -c "
import json, sys
lines = open('$R/eval-mnist1d-family/episodes.jsonl').readlines()
keep = [lines[0]] + [l for l in lines[1:] if json.loads(l)['policy'].startswith('greedy:family:')]
open('$O/episodes.jsonl', 'w').writelines(keep)"
fam() { for p in "$@"; do printf 'greedy:family:%s,' "$R/$p/policy.pt"; done; }
esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --seeds 9301-9320 --workers 2 \
  --policies $(fam no-mnist1d-sign no-mnist1d-sign-seed1)greedy:family:$B2,heuristic,wait,schedule:docs/schedules/grid-mnist1d/wide-fast-1slot.toml \
  --reference heuristic --out $O
