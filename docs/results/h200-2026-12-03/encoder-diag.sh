#!/usr/bin/env bash
# The encoder's idle slowness on the H200 (issue 18; docs/results/h200-2026-12-02/README.md,
# "the encoders"): benchmarks/encoder_idle.py for both encoder shapes, then py-spy on the
# server at a 50 ms gap. Run from the project root on the GPU machine after the kit's
# `device.sh ... install`, with the py-spy binary carried as .gpu/c04/py-spy.xz; writes $OUT.
set -u
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false COLUMNS=160
mkdir -p /root/bin && xz -dc .gpu/c04/py-spy.xz > /root/bin/py-spy && chmod +x /root/bin/py-spy
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,pstate,power.draw --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())"
B=benchmarks/encoder_idle.py
timeout 150 python3 $B --model minilm-l6-shape --tokens 128 > $OUT/minilm-fixed.txt 2>&1
timeout 150 python3 $B --model bge-base-shape --tokens 32,96,160,256 > $OUT/bge-varied.txt 2>&1
timeout 120 python3 $B --model minilm-l6-shape --tokens 32,96,160,256 --modes thread,server \
  --gaps 0,0.05,0.3 --n 40 > $OUT/minilm-varied.txt 2>&1
timeout 120 /root/bin/py-spy record --subprocesses -r 250 -f raw -o $OUT/spy-minilm.txt -- \
  python3 $B --model minilm-l6-shape --tokens 32,96,160,256 --modes server --gaps 0.05 --n 100 \
  > $OUT/spy-run.txt 2>&1
for f in $OUT/minilm-*.txt $OUT/bge-*.txt $OUT/spy-run.txt; do echo "== $f"; grep -v "^{" $f | cut -c1-200 | tail -24; done
