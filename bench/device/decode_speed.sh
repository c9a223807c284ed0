# Issue 19 on the GPU machine, in phases that fit one call each (each phase's log comes back under $OUT):
#   profile   bench/profile_step.py: where each millisecond of a decode step goes (7B NF4, 1.5B bf16; 1 and 16 rows)
#   ttft      bench/worker_gpu.py: one 4k-token prompt on the 7B NF4 worker, and plain `generate` baselines
#   compile-1.5b, compile-7b   bench/worker_gpu.py with `compile: true`: cold inductor cache, then a restart on it
#   engine    bench/paged_gpu.py, graphs and then compiled: tok/s at 1/16/64 and graph-vs-eager equality
#   baselines bench/worker_gpu.py: plain `generate` and transformers' `generate_batch` (1/16/64) on both models
#   attention bench/paged_attention_gpu.py: one layer's decode attention, gathered vs read in place
#   inplace-cold, inplace-restart   bench/paged_gpu.py --compile with attention read in place: a cold inductor cache
#             (both models), then a restart on it (each model at batch 1): the compile-time figures still missing
#   gather-7b bench/paged_gpu.py --compile --decode-attention gather --only 7b: the 7B's baseline in the same session
#   gemv      bench/nf4_gemv_gpu.py: one row times each 7B weight, bitsandbytes against bench/nf4_gemv.py
#   replay-7b bench/paged_gpu.py --compile --only 7b --replay --no-equality at 1 and 16 rows (cold cache): the engine's rate next to
#             its step graph replayed with no host work between steps, and that step's kernels (torch.profiler)
#   restart-7b the same on the inductor cache replay-7b left (start_s: the restart's start-up), batch 1 only
#   keep-cache  the inductor cache (var/compile-cache) as $OUT/compile-cache.tgz, to carry into a later call
# Usage: bash bench/device/prepare.sh; run(command="bash bench/device/decode_speed.sh profile ttft", carry=[".whl", ".gpu"])
source .gpu/setup.sh
export PYTHONUNBUFFERED=1
ck=/tmp/bench-checkpoints-v3
mkdir -p "$OUT"
for phase in "$@"; do
  started=$(date +%s)
  case "$phase" in
    profile)
      timeout "${PROFILE_TIMEOUT:-280}" python3 bench/profile_step.py --checkpoints $ck --out /tmp/profile \
        > "$OUT/profile.txt" 2>&1 ;;
    ttft)
      timeout "${TTFT_TIMEOUT:-150}" python3 bench/worker_gpu.py --checkpoints $ck --out /tmp/wg \
        --only 7b-nf4-one-4k 7b-plain 1.5b-plain > "$OUT/ttft.txt" 2>&1 ;;
    engine)
      timeout "${ENGINE_TIMEOUT:-150}" python3 bench/paged_gpu.py --checkpoints $ck > "$OUT/engine.txt" 2>&1
      timeout "${ENGINE_TIMEOUT:-300}" python3 bench/paged_gpu.py --checkpoints $ck --compile \
        > "$OUT/engine-compiled.txt" 2>&1 ;;
    baselines)
      timeout "${BASELINE_TIMEOUT:-300}" python3 bench/worker_gpu.py --checkpoints $ck --out /tmp/wg \
        --only 1.5b-plain 1.5b-generate-batch 7b-plain 7b-generate-batch > "$OUT/baselines.txt" 2>&1 ;;
    attention)
      timeout "${ATTENTION_TIMEOUT:-120}" python3 bench/paged_attention_gpu.py > "$OUT/attention.txt" 2>&1 ;;
    inplace-cold)
      timeout "${ENGINE_TIMEOUT:-560}" python3 bench/paged_gpu.py --checkpoints $ck --decode-attention in-place \
        --compile > "$OUT/inplace-cold.txt" 2>&1 ;;
    inplace-restart)
      for model in 1.5b 7b; do
        timeout "${ENGINE_TIMEOUT:-250}" python3 bench/paged_gpu.py --checkpoints $ck --decode-attention in-place \
          --compile --only $model --concurrency 1 > "$OUT/inplace-restart-$model.txt" 2>&1
      done ;;
    gather-7b)
      timeout "${ENGINE_TIMEOUT:-560}" python3 bench/paged_gpu.py --checkpoints $ck --decode-attention gather \
        --compile --only 7b > "$OUT/gather-7b.txt" 2>&1 ;;
    gemv)
      timeout "${GEMV_TIMEOUT:-200}" python3 bench/nf4_gemv_gpu.py > "$OUT/gemv.txt" 2>&1 ;;
    replay-7b)
      timeout "${ENGINE_TIMEOUT:-480}" python3 bench/paged_gpu.py --checkpoints $ck --compile --only 7b --replay \
        --no-equality --concurrency 1 16 > "$OUT/replay-7b.txt" 2>&1 ;;
    restart-7b)
      timeout "${RESTART_TIMEOUT:-150}" python3 bench/paged_gpu.py --checkpoints $ck --compile --only 7b --no-equality \
        --concurrency 1 > "$OUT/restart-7b.txt" 2>&1 ;;
    keep-cache)
      tar czf "$OUT/compile-cache.tgz" var/compile-cache ;;
    compile-1.5b|compile-7b)
      case_name=$([ "$phase" = compile-7b ] && echo 7b-nf4-compiled || echo 1.5b-bf16-compiled)
      for start in cold warm; do
        timeout "${COMPILE_TIMEOUT:-240}" python3 bench/worker_gpu.py --checkpoints $ck --out /tmp/wg --quick \
          --only "$case_name" > "$OUT/$phase-$start.txt" 2>&1
        echo "$start rc=$?" >> "$OUT/$phase-$start.txt"
      done
      du -sh var/compile-cache 2>/dev/null >> "$OUT/$phase-warm.txt" ;;
  esac
  echo "$phase: rc=$? after $(( $(date +%s) - started )) s" | tee -a "$OUT/phases.txt"
done
