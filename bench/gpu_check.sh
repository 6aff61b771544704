#!/usr/bin/env bash
# Everything a lent GPU must show, in one unattended run (about 8 minutes on one H100/H200):
#   bash bench/gpu_check.sh [OUT_DIR]        (OUT_DIR default: $OUT, else ./gpu_check_out)
#   DRY=1 bash bench/gpu_check.sh            (CPU rehearsal with the tiny presets: checks the script itself)
# Each step writes OUT_DIR/<step>.txt (markdown tables / JSON lines); a failing or timed-out step is
# reported and the run goes on. Paste summary.md into the README's GPU table.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out"
summary="$out/summary.md"
: >"$summary"

step() {  # step NAME SECONDS python-args...
    local name=$1 limit=$2
    shift 2
    echo "## $name" | tee -a "$summary"
    if timeout "$limit" python3 "$@" >"$out/$name.txt" 2>&1; then
        grep -E '^\|' "$out/$name.txt" | grep -E 'forward seconds|achieved|ceiling|share|peak|bytes per|ours|native|est\. s|s per forward' \
            >>"$summary" || tail -n 5 "$out/$name.txt" >>"$summary"
    else
        echo "(step failed or timed out after ${limit}s: see $name.txt)" | tee -a "$summary"
        tail -n 5 "$out/$name.txt" >>"$summary"
    fi
}

has() { python3 -c "import $1" >/dev/null 2>&1; }

{
    date -u
    nvidia-smi 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    for m in flash_attn_interface flash_attn sageattention triton; do has "$m" && echo "installed: $m"; done
} >"$out/environment.txt" 2>&1

if [[ "${DRY:-0}" == 1 ]]; then
    big=(--preset tiny --warmup 0 --repeats 1)
else
    big=(--preset 14b --warmup 1 --repeats 3)
fi

step bytes_per_block 60 bench/dit_forward.py --count-bytes
step h100_model_estimate 60 bench/dit_forward.py --estimate-h100
step bf16_sdpa 150 bench/dit_forward.py "${big[@]}" --attention sdpa
step bf16_auto 150 bench/dit_forward.py "${big[@]}" --attention auto
if has sageattention && [[ "${DRY:-0}" != 1 ]]; then
    step bf16_sage 150 bench/dit_forward.py "${big[@]}" --attention sage --dtype bfloat16
fi
if has flash_attn_interface || has flash_attn; then
    [[ "${DRY:-0}" != 1 ]] && step bf16_flash 150 bench/dit_forward.py "${big[@]}" --attention flash
fi
if [[ "${DRY:-0}" != 1 ]]; then
    step bf16_compiled 300 bench/dit_forward.py --preset 14b --warmup 2 --repeats 3 --attention auto --compile blocks
fi
step fp8_matmul 150 bench/dit_forward.py "${big[@]}" --attention auto --fp8 fp8 --dtype bfloat16
step fp8_dequantize 150 bench/dit_forward.py "${big[@]}" --attention auto --fp8 dequantize --dtype bfloat16
step fp8_matmul_24gib 150 bench/dit_forward.py "${big[@]}" --attention auto --fp8 fp8 --dtype bfloat16 \
    --memory-cap-gib 24
if [[ "${DRY:-0}" != 1 ]]; then
    step chunk_end_to_end 420 bench/stream.py gpu  # 40 x 3 and 4 x 1 chunks, stage split, peak VRAM
fi
echo "done: $summary"
