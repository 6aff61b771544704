#!/usr/bin/env bash
# Everything a lent GPU must show, in one unattended run under a time budget (default 470 s: the
# issue's 8 minutes, leaving a device call's 600 s limit some room):
#   bash bench/gpu_check.sh [OUT_DIR]        (OUT_DIR default: $OUT, else ./gpu_check_out)
#   BUDGET=300 bash bench/gpu_check.sh       (seconds for the whole run; later steps are skipped)
#   DRY=1 bash bench/gpu_check.sh            (CPU rehearsal with the tiny presets: checks the script itself)
# Steps run most important first; each writes OUT_DIR/<step>.txt (markdown tables / JSON lines) and is
# cut to the budget left. A failing, timed-out or skipped step is reported and the run goes on.
# Paste summary.md into the README's GPU table.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_check_out}}
budget=${BUDGET:-470}
mkdir -p "$out"
summary="$out/summary.md"
: >"$summary"

step() {  # step NAME SECONDS python-args...
    local name=$1 limit=$2 left=$((budget - SECONDS))
    shift 2
    echo "## $name" | tee -a "$summary"
    if ((left < 20)); then
        echo "(skipped: the ${budget}s budget is spent)" | tee -a "$summary"
        return
    fi
    ((limit > left)) && limit=$left
    local start=$SECONDS
    if timeout "$limit" python3 "$@" >"$out/$name.txt" 2>&1; then
        grep -E '^\||^\{' "$out/$name.txt" | grep -E 'forward seconds|achieved|ceiling|share|peak|bytes per|ours|native|est\. s|s per forward|dit_s' \
            >>"$summary" || tail -n 5 "$out/$name.txt" >>"$summary"
    else
        echo "(step failed or timed out after ${limit}s: see $name.txt)" | tee -a "$summary"
        tail -n 5 "$out/$name.txt" >>"$summary"
    fi
    echo "($((SECONDS - start)) s)" >>"$summary"
}

has() { python3 -c "import $1" >/dev/null 2>&1; }

{
    date -u
    nvidia-smi 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    for m in flash_attn_interface flash_attn sageattention triton; do has "$m" && echo "installed: $m"; done
} >"$out/environment.txt" 2>&1

dry=${DRY:-0}
if [[ "$dry" == 1 ]]; then
    big=(--preset tiny --warmup 0 --repeats 1)
else
    big=(--preset 14b --warmup 1 --repeats 3)
fi

# 1. what every later number is read against: the matmul ceiling, bf16 s/NFE, FP8 s/NFE
step bf16_auto 120 bench/dit_forward.py "${big[@]}" --attention auto
step fp8_matmul 120 bench/dit_forward.py "${big[@]}" --attention auto --fp8 fp8 --dtype bfloat16
# 2. one 4 x 1 chunk end to end (stage split, peak VRAM), and 8 x 3 for the per-forward cost of 40 x 3
[[ "$dry" != 1 ]] && step chunk_end_to_end 150 bench/stream.py gpu --recipes 4x1,8x3
# 3. compile on (off is bf16_auto), the 24 GiB cap, the attention kernels one by one
[[ "$dry" != 1 ]] && step bf16_compiled 180 bench/dit_forward.py --preset 14b --warmup 2 --repeats 3 \
    --attention auto --compile blocks
step fp8_matmul_24gib 90 bench/dit_forward.py "${big[@]}" --attention auto --fp8 fp8 --dtype bfloat16 \
    --memory-cap-gib 24
step bf16_sdpa 90 bench/dit_forward.py "${big[@]}" --attention sdpa
if has sageattention && [[ "$dry" != 1 ]]; then
    step bf16_sage 90 bench/dit_forward.py "${big[@]}" --attention sage --dtype bfloat16
fi
if (has flash_attn_interface || has flash_attn) && [[ "$dry" != 1 ]]; then
    step bf16_flash 90 bench/dit_forward.py "${big[@]}" --attention flash
fi
step fp8_dequantize 90 bench/dit_forward.py "${big[@]}" --attention auto --fp8 dequantize --dtype bfloat16
step two_speakers_batched 90 bench/dit_forward.py "${big[@]}" --attention auto --speakers 2 --batch 3
# 4. machine-independent counters (CPU work; last so the GPU steps get the budget)
step bytes_per_block 60 bench/dit_forward.py --count-bytes
step h100_model_estimate 60 bench/dit_forward.py --estimate-h100
echo "done in ${SECONDS}s: $summary"
