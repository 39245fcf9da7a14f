#!/bin/sh
# The 'export' job of docker-compose.yml: write the Triton model repository into /models, once.
#
#   DRONEDEPTH_MODEL        Hugging Face hub id, a save_pretrained directory, or an official .pth checkpoint
#                           (e.g. /weights/depth_anything_v2_metric_vkitti_vits.pth: add --encoder and --metric
#                           to DRONEDEPTH_EXPORT_ARGS)
#   DRONEDEPTH_EXPORT_ARGS  more 'dronedepth export' options (default in the compose file: --trt --max-batch-size 8)
#   DRONEDEPTH_MODEL_NAME   the model name Triton serves (default depth_anything_v2)
#   DRONEDEPTH_REEXPORT=1   rebuild even if the repository already holds the model (new weights, new GPU)
set -eu

out=/models
name=${DRONEDEPTH_MODEL_NAME:-depth_anything_v2}
model=${DRONEDEPTH_MODEL:?set DRONEDEPTH_MODEL to a Hugging Face hub id or a checkpoint under /weights}

if [ -f "$out/$name/config.pbtxt" ] && [ "${DRONEDEPTH_REEXPORT:-0}" != "1" ]; then
    echo "export: $out/$name is already exported; set DRONEDEPTH_REEXPORT=1 to rebuild it (new weights or GPU)"
    exit 0
fi

case "$model" in
    *.pth) set -- --checkpoint "$model" ;;
    *) set -- --model "$model" ;;
esac

# A TensorRT plan is built for the GPU it is built on: this job runs on the serving GPU.
# DRONEDEPTH_EXPORT_ARGS is split into words on purpose.
# shellcheck disable=SC2086
exec dronedepth export "$@" --out "$out" --name "$name" --device gpu ${DRONEDEPTH_EXPORT_ARGS:---trt}
