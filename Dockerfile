# One image for the api, ingest and scheduler processes (docker-compose.yml picks the command).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alarmcentre ./alarmcentre
COPY devices ./devices
COPY dashboard ./dashboard
RUN pip install --no-cache-dir -e . && useradd --system --uid 10001 alarmcentre
USER alarmcentre
EXPOSE 8000 9101
ENTRYPOINT ["alarmcentre"]
CMD ["api", "--host", "0.0.0.0"]
