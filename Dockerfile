# Build and run the single `geonex` binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin geonex

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 geonex
COPY --from=build /src/target/release/geonex /usr/local/bin/geonex
USER geonex
ENV GEONEX_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["geonex"]
CMD ["serve"]
