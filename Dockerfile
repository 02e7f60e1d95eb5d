# syntax=docker/dockerfile:1
# hsm-signer. The HSM vendor's PKCS#11 library is mounted at run time (hsm.module in the config).
# The build context is what .dockerignore allows: the files COPYed below, never .data/ (the quick
# start's PINs, token and keys), node_modules/, dist/ or .git/.
#   docker build -t hsm-signer .                      # runtime image, non-root
#   docker build --target softhsm -t hsm-signer:try . # with SoftHSM2 and the demo, for trying it out

FROM node:20-bookworm-slim AS build
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts ./scripts
COPY proto ./proto
COPY src ./src
COPY test ./test
RUN npm run build \
 && node scripts/package-plugin.mjs \
 && npm prune --omit=dev

FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/proto ./proto
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/dist/hsm-signer ./dist/hsm-signer
# The notation plugin package, for copying out of the image: docker cp / an init container.
COPY --from=build /src/dist/notation-hsm-signer_*.tar.gz* /opt/notation-plugin/
# `hsm-signer` on PATH, as npm link makes it outside the image (docker exec ... hsm-signer keys list).
# The base image's package managers (npm, npx, corepack, yarn) go: the service never runs them,
# and they would ship their own dependencies (and their advisories) in a signing service's image.
RUN ln -s /app/dist/hsm-signer /usr/local/bin/hsm-signer \
 && rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack /opt/yarn-v* \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /usr/local/bin/yarn /usr/local/bin/yarnpkg
USER 10001:10001
EXPOSE 8443 9443 9464
ENTRYPOINT ["node", "/app/dist/src/bin/hsm-signer.js"]
CMD ["serve", "--config", "/etc/hsm-signer/config.yaml"]

FROM runtime AS softhsm
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends softhsm2 opensc openssl \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown 10001:10001 /data
COPY --from=build /src/scripts ./scripts
USER 10001:10001
ENV HSM_SIGNER_DATA=/data HSM_SIGNER_LISTEN=0.0.0.0:8443 HSM_SIGNER_ADMIN_LISTEN=0.0.0.0:9443 HSM_SIGNER_METRICS_LISTEN=0.0.0.0:9464 DEMO_MTLS=1
# Plaintext is refused off loopback, so the try-out keeps TLS (dev CA in /data/tls), and callers
# from outside the container present the dev client certificate (DEMO_MTLS=1).
ENTRYPOINT ["bash", "/app/scripts/demo-setup.sh"]
CMD []
