# One image for the four Likeness services; compose.yaml chooses which one a container runs
# (python -m services.<name>). Dependencies come pinned from requirements.lock, as ./taskw installs them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependency layer first, so code changes do not reinstall torch.
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY infra ./infra
COPY services ./services
# Dependencies are already in place from the lock; this only registers the project's packages.
RUN pip install --no-deps --no-build-isolation -e .

# An unprivileged user with a writable home (library caches); /models is where the model-cache volume
# is mounted.
RUN useradd --system --uid 10001 --create-home --home-dir /home/likeness likeness \
    && mkdir -p /models \
    && chown likeness /models
USER likeness

CMD ["python", "-m", "services.gateway"]
