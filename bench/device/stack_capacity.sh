# One GPU call (about 6 minutes): the whole stack, today's code (.gpu/base) and this checkout in one run, through
# `tiered-router up`: each worker's fixed cost, the burst capacity of the large tier with the queue-wait rule off,
# 128 mixed requests at concurrency 32, decode tok/s per worker. Logs come back as $OUT/logs.tgz.
#   bash bench/device/prepare.sh; run(command="bash bench/device/stack_capacity.sh", carry=[".whl", ".gpu"])
source .gpu/setup.sh
mkdir -p "$OUT/logs"
started=$(date +%s)
timeout "${STACK_TIMEOUT:-420}" python3 bench/stack_gpu.py --checkpoints /tmp/bench-checkpoints-v3 \
  --case new=. --case base=.gpu/base --set new:workers.large.max_batch_size=128 \
  --set base:workers.small.vram.budget_fraction=0.35 --set base:workers.large.vram.budget_fraction=0.45 \
  --start-timeout 120 --out /tmp/stack > "$OUT/logs/stack.txt" 2>&1
echo "stack rc=$? after $(( $(date +%s) - started )) s" >> "$OUT/logs/stack.txt"
cp -r /tmp/stack "$OUT/logs/" 2>/dev/null
cd "$OUT" && tar czf logs.tgz logs && rm -rf logs
