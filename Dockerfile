# syntax=docker/dockerfile:1
#
# Rotavault's container image: one static binary on an empty base image,
# running as a numeric non-root user, with only the data directory writable
# (run it with --read-only). tools/deploytest/dockerfile_test.go parses this
# file, runs the build stage's RUN lines as written, checks that the binary is
# static, and runs the final stage's command with only the data directory
# writable.
#
#   docker build --build-arg VERSION=v1.2.3 -t rotavault .
#   docker run --read-only -v rotavault-data:/var/lib/rotavault \
#     -v /etc/rotavault:/etc/rotavault:ro -p 7443:7443 -p 9090:9090 rotavault \
#     serve --data-dir=/var/lib/rotavault --store-key-file=/etc/rotavault/store.key \
#       --addr=0.0.0.0:7443 --tls-cert=/etc/rotavault/tls.crt --tls-key=/etc/rotavault/tls.key \
#       --tls-client-ca=/etc/rotavault/clients-ca.pem --policy=/etc/rotavault/policy.json \
#       --http-listen=0.0.0.0:9090
#
# Without TLS and a policy, serve listens on loopback only (see the README),
# so the default command serves nobody outside the container: give the flags
# above, or see deploy/helm/rotavault.

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# VERSION is what `rotavault version` and rotavault_build_info report.
ARG VERSION=devel
# Static (no cgo, no ELF interpreter), no build paths in the binary, the
# version stamped; out/data becomes the image's empty data directory.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X github.com/rotavault/rotavault/internal/version.override=${VERSION}" -o out/rotavault ./cmd/rotavault && mkdir -p out/data

FROM scratch
# Providers and Vault are reached over TLS: the CA bundle is the only other
# file the binary reads.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/out/rotavault /rotavault
COPY --from=build --chown=65532:65532 /src/out/data /var/lib/rotavault
USER 65532:65532
VOLUME ["/var/lib/rotavault"]
EXPOSE 7443 9090
ENTRYPOINT ["/rotavault"]
CMD ["serve", "--data-dir=/var/lib/rotavault"]
