# Granda in a container. Needs base images from a registry (rust, debian): build it where one is reachable.
#   docker build -t granda .
#   docker run -p 8080:8080 -v /var/run/docker.sock:/var/run/docker.sock \
#     -e GRANDA_DATABASE_URL=postgres://... -e GRANDA_AMQP_URL=amqp://... granda        # `granda up`
# See docker-compose.yml for a server, a worker, RabbitMQ and Postgres together.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin granda \
 && install -m 0755 target/release/granda /usr/local/bin/granda

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /usr/local/bin/granda /usr/local/bin/granda
ENV GRANDA_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["granda"]
CMD ["up"]
