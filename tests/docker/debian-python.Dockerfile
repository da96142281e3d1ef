# A stand-in base image for networks that reach no container registry (like this one's CI).
# Built FROM the local Debian image that ../shared/docker-engine.sh makes with debootstrap;
# it gives the build stage a Python with headers and a C++ compiler, and the test stage a
# clean Python. Debian bookworm ships only Python 3.11, so targets built on it either use
# abi3 (cp39-abi3) or carry cp311 tags (sagebuild keeps the tags the wheel really has).
#
#   docker build -t local/sagebuild-debian:bookworm -f tests/docker/debian-python.Dockerfile tests/docker
#   sagebuild build --base-image local/sagebuild-debian:bookworm --set '*.args.PYTHON=/usr/bin/python3' ...
ARG BASE=local/debian:bookworm
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      python3 python3-pip python3-venv python3-dev build-essential ccache patchelf binutils \
 && rm -rf /var/lib/apt/lists/* \
 && python3 --version
