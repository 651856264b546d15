#!/usr/bin/env bash
# One configuration of issue #13's protocol (benchmarks/compare.py) with every (seed, method) in its own
# process, for a machine with many cores or one GPU; the parts are then joined by compare.py --merge.
# Resumable as compare.py is: the same command again continues where a cut-off run stopped.
#
#   bash benchmarks/compare_parallel.sh CONFIG [DEVICE] [OUT] [WORK] [SEED ...]
#   bash benchmarks/compare_parallel.sh fashion-small_vgg-3seeds cuda   # the small-VGG figures, one GPU
#
# DEVICE is cpu (default) or cuda[:N]; each process uses one torch thread. Logs: WORK/parts/CONFIG/*/log.
set -euo pipefail
config=${1:?usage: compare_parallel.sh CONFIG [DEVICE] [OUT] [WORK] [SEED ...]}
device=${2:-cpu} out=${3:-benchmarks/results} work=${4:-runs/compare}
shift $(($# < 4 ? $# : 4))
if (($#)); then seeds=("$@"); else seeds=(0 1 2); fi
here=$(cd "$(dirname "$0")" && pwd)
methods=(gmp_layer gmp_global oneshot_layer l1_fixed l1_ramp sabr sabr_ft sabr_ft_half)

pids=()
for seed in "${seeds[@]}"; do
  base=$work/$config/seed$seed/base.json  # written last (atomically, with its weights)
  first=
  for m in "${methods[@]}"; do
    part=$work/parts/$config/seed$seed-$m
    mkdir -p "$part"
    (
      if [[ -n $first ]]; then  # the seed's first process trains its base; the others wait for it
        while [[ ! -f $base ]] && kill -0 "$first" 2>/dev/null; do sleep 2; done
        [[ -f $base ]] || { echo "no base model: see $work/parts/$config/seed$seed-${methods[0]}/log"; exit 1; }
      fi
      exec python "$here/compare.py" --configs "$config" --seeds "$seed" --methods "$m" --device "$device" \
        --threads 1 --out "$part" --work "$work"
    ) >"$part/log" 2>&1 &
    pids+=($!)
    first=${first:-$!}
  done
done
echo "$(date +%T) ${#pids[@]} processes on $device: logs in $work/parts/$config/*/log"
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
((failed == 0)) || echo "$failed process(es) failed: see their logs"

parts=("$work"/parts/"$config"/*/"$config".json)
[[ -f ${parts[0]} ]] || { echo "no results yet"; exit 1; }
python "$here/compare.py" --merge "${parts[@]}" --out "$out" \
  --command "bash benchmarks/compare_parallel.sh $config $device"
exit $((failed > 0))
