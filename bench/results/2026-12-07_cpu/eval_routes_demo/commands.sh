set -x
cd /work/main
.venv/bin/python -m vldft.train configs/demo.yaml train.output_dir=/tmp/demo_eval/run train.overwrite=true > /tmp/demo_eval/train.log 2>&1
.venv/bin/python -m vldft.eval --model /tmp/demo_eval/run/final --tasks vldft_geo_heldout --device cpu --out /tmp/demo_eval/vldft --overwrite > /tmp/demo_eval/vldft.log 2>&1
.venv/bin/python -m vldft.eval --model /tmp/demo_eval/run/final --tasks vldft_geo_heldout --device cpu --model-class qwen2_5_vl --out /tmp/demo_eval/stock --overwrite > /tmp/demo_eval/stock.log 2>&1
.venv/bin/python -m vldft.eval --model /tmp/demo_eval/run/final --tasks vldft_geo_heldout --device cpu --model-args dtype=bfloat16 --out /tmp/demo_eval/vldft_bf16 --overwrite > /tmp/demo_eval/vldft_bf16.log 2>&1
echo done > /tmp/demo_eval/DONE
