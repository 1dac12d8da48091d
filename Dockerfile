FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY rotator ./rotator
COPY rotators ./rotators
RUN pip install --no-cache-dir . && useradd --system rotator
USER rotator
ENTRYPOINT []
CMD ["rotator", "--help"]
