# One-shot rebuild on a CUDA machine:
#   docker build -t es2 .
#   docker run --gpus all -v "$PWD/out:/out" es2                                # params/default.yaml
#   docker run --gpus all -v "$PWD/out:/out" -e HF_TOKEN es2 PARAMS=params/qwen2.5-7b.yaml
# Results land in the mounted folder: out/runs/<name>/ (notebooks, results, manifest) and out/figures/<name>/.
# The base image is PyTorch 2.13.0 (the version constraints.txt pins) with CUDA 12.6, pinned by digest.
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime@sha256:6acf597eeb8e376a96580dde4952f37cc017fef732bb40bfc73f28f25e3f64b4

RUN apt-get update && apt-get install -y --no-install-recommends make git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
# The same install command as `make setup` on a developer machine and in CI (the venv reuses the image's torch).
RUN make setup VENV=/opt/venv
ENV ES2_RUNS_DIR=/out/runs ES2_FIGURES_DIR=/out/figures ES2_CACHE=/out/cache
# The same entry command as README's main job; extra arguments are make variables (PARAMS=...).
ENTRYPOINT ["make", "--no-print-directory", "VENV=/opt/venv", "run"]
