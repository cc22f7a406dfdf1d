#!/usr/bin/env bash
# One command for a CUDA machine: everything the CPU-only CI cannot check, each step with a
# one-line verdict, in minutes.
#
#   bash scripts/check_gpu.sh            # after `make setup` (uses .venv) on the GPU machine
#   OUT=/some/dir bash scripts/check_gpu.sh
#
# 1. the CUDA tests (tests/scale/test_cuda.py: NCCL DDP, FSDP1, DeepSpeed ZeRO-2, CUDA fp16
#    loss scaling) — skipped on CPU, run here;
# 2. `trainer=gpu trainer.precision=16-mixed` runs of three families (vae, transformer, ddpm),
#    short, each must finish and write metrics.json;
# 3. DDP, ZeRO-1 and FSDP2 over every visible GPU (torchrun), short gpt runs.
# Exit status: the number of failed steps (0: all passed). Logs: $OUT/<step>.log.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/check_gpu}
mkdir -p "$OUT"
failed=0

verdict() {  # verdict <name> <seconds> <status>
  if [ "$3" -eq 0 ]; then echo "PASS $1 (${2}s)"; else echo "FAIL $1 (${2}s, exit $3; log: $OUT/$1.log)"; failed=$((failed + 1)); fi
}

step() {  # step <name> <command...>
  local name=$1; shift
  local start=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  verdict "$name" $((SECONDS - start)) $?
}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "FAIL cuda: torch.cuda.is_available() is False on this machine (nothing else run)"
  exit 1
fi
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
echo "$("$PY" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}')")"

step cuda_tests "$PY" -m pytest -q -p no:cacheprovider -n 0 tests/scale/test_cuda.py

SHORT=(trainer.max_epochs=1 +trainer.limit_train_batches=20 +trainer.limit_val_batches=2
       +trainer.limit_test_batches=2)
for model in vae transformer ddpm; do
  step "gpu_16_mixed_$model" "$PY" train.py "model=$model" trainer=gpu trainer.precision=16-mixed \
    "${SHORT[@]}" "hydra.run.dir=$OUT/runs/$model"
done

for strategy in ddp zero1 fsdp; do
  step "torchrun_${strategy}_${GPUS}gpu" "$PY" -m torch.distributed.run --standalone \
    --nproc_per_node="$GPUS" train.py model=gpt "trainer=$strategy" trainer.accelerator=gpu \
    "${SHORT[@]}" "hydra.run.dir=$OUT/runs/gpt_$strategy"
done

echo "$failed step(s) failed"
exit "$failed"
