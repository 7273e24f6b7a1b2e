#!/usr/bin/env bash
# One short GPU check (a few minutes on one GPU): CUDA training with bf16 autocast on generated
# data, reload + eval, and `lore bench` on ViT-B/16 (CLIP) at 224 in bf16. Writes under ${1:-gpu_out}.
set -euo pipefail
out=${1:-gpu_out}
mkdir -p "$out"
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}  # DEVICE=cpu SKIP_BENCH=1 checks the script itself on a CPU
$py - "$out" <<'PY'
import sys
from pathlib import Path
from lore.synthetic.marks import write_marks
write_marks(Path(sys.argv[1]) / "marks", "ABCD", n_train=32, n_test=16, size=64)
PY
$py -c "import numpy as np; np.save('$out/k.npy', np.random.default_rng(0).standard_normal((4, 32)).astype('float32'))"
for m in vpt-deep lore; do
  $py -m lore train --method $m --backbone vit_small_patch16_224 --no-pretrained \
      --backbone-args img_size=64,patch_size=8 --img-size 64 --data "$out/marks" --knowledge "file:$out/k.npy" \
      --epochs 3 --batch-size 32 --device "$dev" --amp bf16 --workers 4 --out "$out/run-$m"
  $py -m lore eval --run "$out/run-$m" --device "$dev" --workers 4
done
[ -n "${SKIP_BENCH:-}" ] || $py -m lore bench --backbone vit_base_patch16_clip_quickgelu_224.openai --img-size 224 --batch 64 --device "$dev" \
    --dtype bf16 --methods b-b,vpt-deep,lore --repeats 10 --warmup 3 --out "$out/bench-vitb16"
