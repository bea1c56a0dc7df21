#!/usr/bin/env bash
# The H200 runs of issue 18, as a job detached from the device calls (each call lays the tree
# afresh and ends after at most 10 minutes): run from the project root on the GPU machine,
# after the kit's `device.sh ... install` (../shared/gpu/README.md).
#   bash docs/results/h200-2026-12-02/device-job.sh start [JOB...]  copy the tree to /root/cotenant,
#        run the JOBs one after another: timeslice (default), mps, five, encoders (see `start` below)
#   bash docs/results/h200-2026-12-02/device-job.sh poll S  wait up to S seconds, print progress
#   bash docs/results/h200-2026-12-02/device-job.sh pack    each run directory as $OUT/<name>.tar.xz
set -u
export PYTHONPATH=/root/site:/root/cotenant PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
  TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_USE_FLASHINFER_SAMPLER=0 \
  TOKENIZERS_PARALLELISM=false COLUMNS=160
RUNS=/root/runs
case ${1:-} in
  start)
    # JOBS run one after another: timeslice (the pair's campaign), mps (the pair's capacity
    # under MPS), five (the five-tenant capacity campaign)
    shift; jobs=${*:-timeslice}
    rm -rf /root/cotenant $RUNS/DONE && mkdir -p /root/cotenant $RUNS
    tar --exclude=./.gpu --exclude=./.venv -cf - . | tar -xf - -C /root/cotenant
    cd /root/cotenant || exit 1
    setsid nohup bash -c '
      for job in '"$jobs"'; do
        case $job in
          mps) python3 -m orchestrator capacity examples/h200-capacity-pair.yaml --sharing mps --out '$RUNS' > '$RUNS'/mps.log 2>&1 ;;
          five) python3 -m orchestrator run examples/h200-five.yaml --out '$RUNS' > '$RUNS'/five.log 2>&1 ;;
          encoders) python3 -m orchestrator run docs/results/h200-2026-12-02/h200-encoders-alone.yaml --out '$RUNS' > '$RUNS'/encoders.log 2>&1 ;;
          *) python3 -m orchestrator run examples/h200-capacity-pair.yaml --out '$RUNS' > '$RUNS'/timeslice.log 2>&1 ;;
        esac
        echo "$job exit $?" >> '$RUNS'/STATUS
      done
      echo done >> '$RUNS'/DONE' > $RUNS/job.log 2>&1 < /dev/null &
    echo "started job $! ($jobs)"; sleep 5; nvidia-smi --query-gpu=name,memory.used --format=csv ;;
  poll)
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt $end ] && [ ! -e $RUNS/DONE ]; do sleep 10; done
    cat $RUNS/STATUS 2>/dev/null
    for d in $RUNS/*/; do
      [ -e "$d/campaign.json" ] || continue
      echo "$(basename $d): $(grep -l '"status": "completed"' $d/*/manifest.json 2>/dev/null | wc -l) completed, $(grep -l '"status": "failed"' $d/*/manifest.json 2>/dev/null | wc -l) failed"
    done
    for f in $RUNS/timeslice.log $RUNS/mps.log $RUNS/five.log $RUNS/encoders.log; do [ -e $f ] && { echo "== $f"; grep -aE "healthy after|capacity |error|Error|overhead|W " $f | tail -25; }; done
    [ -e $RUNS/DONE ] && echo ALL-DONE ;;
  pack)
    cd $RUNS || exit 1
    for d in */; do
      n=${d%/}
      tar --exclude="$n/.cache" --exclude="$n/.mps" -cJf "$OUT/$n.tar.xz" "$n" && ls -la "$OUT/$n.tar.xz"
    done
    cp timeslice.log mps.log five.log "$OUT/" 2>/dev/null; true ;;
  *) echo "usage: $0 start [timeslice|mps|five|encoders ...] | poll SECONDS | pack"; exit 2 ;;
esac
