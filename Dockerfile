# orch in a container: the coordinator, or a CPU worker (docker-compose.yml uses both).
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ cmake ninja-build \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN pip install --no-cache-dir /src
ENTRYPOINT ["orch"]
