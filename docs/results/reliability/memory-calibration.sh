#!/bin/bash
# usage: cal.sh TAG TASK WIDTH EPOCHS POLICY [extra...]
cd /tmp/cal
. /work/h-rel/.venv/bin/activate
export OMP_NUM_THREADS=1
tag=$1; task=$2; w=$3; ep=$4; pol=$5; shift 5
wa=""; [ "$w" != default ] && wa="--width $w"
/usr/bin/time -f "RSS %M KB wall %e s" -o /tmp/cal/$tag.time nice -n 5 esper run --quiet --task $task $wa --epochs $ep --policy $pol --out /tmp/cal/out-$tag --overwrite "$@" > /tmp/cal/$tag.log 2>&1
est=$(grep -o "about [0-9.]* [KMG]iB" /tmp/cal/$tag.log | head -1)
params=$(grep -o "host: [0-9,]* parameters" /tmp/cal/$tag.log | head -1)
echo "$tag task=$task width=$w epochs=$ep policy=$pol $* | $params | est $est | $(cat /tmp/cal/$tag.time | tail -1)" >> /tmp/cal/results.txt
