# Does the best plan depend on the training-set size? If it did, a controller that reads the size from what it sees
# (the train/validation gap, how fast the host learns) could beat every single plan, and so its own recipe, on a mix
# of sizes. Decided before running (2026-12-08; an 8-seed look at seeds 9501-9508 came first, not reported):
# mnist1d at 500 and at 4,000 (its own split) training examples, text at 256 and at 1,024 (text.toml's) sequences;
# each task's eight grid schedules, the heuristic and wait; seeds 9301-9320, 20 epochs. conditions.py then prints, per task, the best single plan over both sizes, and the
# per-size best (a controller that knows the size) minus it, paired by (size, seed), 95% t-interval.
set -x
cd "$(git rev-parse --show-toplevel)"; if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi; export OMP_NUM_THREADS=1
R=docs/results/tamiyo/multitask; O=$R/sizes
grid() { for f in "$1"/*.toml; do printf 'schedule:%s,' "$f"; done; }
M=$(grid docs/schedules/grid-mnist1d)heuristic,wait; T=$(grid docs/results/text/grid)heuristic,wait
for n in 500 4000; do
  esper eval --config docs/results/mnist1d/mnist1d.toml --task mnist1d --epochs 20 --train-size $n --seeds 9301-9320 \
    --workers 2 --policies $M --out $O/mnist1d-$n
done
for n in 256 1024; do
  esper eval --config docs/results/text/text.toml --epochs 20 --train-size $n --seeds 9301-9320 --workers 2 \
    --policies $T --out $O/text-$n
done
python $R/conditions.py $O/mnist1d-500/episodes.jsonl $O/mnist1d-4000/episodes.jsonl
python $R/conditions.py $O/text-256/episodes.jsonl $O/text-1024/episodes.jsonl
