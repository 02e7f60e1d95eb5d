// Layer rules (issue 12 §6, design.md §3): imports point down,
//   bin → edges (server, plugin, admin) → adapters (hsm, auth, audit, metrics, client, tls) → signing → errors, log, schema, fs
// and edges never import each other. Each folder lists what it may not import; test/unit/layers.test.ts
// shows that a wrong import fails lint.
// src/gen/ (generated from proto/ by npm run generate, not linted) is the wire contract: it imports only @bufbuild/protobuf/wire.

const EDGES = ["server", "plugin", "admin"];
const ADAPTERS = ["hsm", "auth", "audit", "metrics", "client", "tls"];
const NATIVE_OR_GRPC = ["graphene-pk11", "pkcs11js", "@grpc/grpc-js", "@grpc/proto-loader", "prom-client", "pg"];

const folder = (name) => [`../${name}`, `../${name}/*`];
const forbid = (names, why) => ({ group: names.flatMap(folder), message: why });

function layer(files, patterns, paths = []) {
  return {
    files,
    rules: { "no-restricted-imports": ["error", { patterns, paths }] },
  };
}

export const layerRules = [
  layer(
    ["src/errors/**/*.ts", "src/log/**/*.ts", "src/schema/**/*.ts", "src/fs/**/*.ts"],
    [forbid(["bin", ...EDGES, ...ADAPTERS, "signing", "schema", "fs"], "errors/, log/, schema/ and fs/ are the bottom layer: they import nothing of the project")],
  ),
  layer(["src/signing/**/*.ts"], [forbid(["bin", ...EDGES, ...ADAPTERS], "signing/ is the domain core: it imports only errors/ and log/; adapters implement its ports")]),
  ...ADAPTERS.map((name) => layer([`src/${name}/**/*.ts`], [forbid(["bin", ...EDGES], `${name}/ is an adapter: it never imports an edge or bin/`)])),
  layer(["src/tls/**/*.ts"], [forbid(["bin", ...EDGES, "hsm", "auth", "audit", "metrics", "client"], "tls/ holds the chain checks both edges share: it imports only signing/, errors/ and log/")]),
  ...EDGES.map((name) => layer([`src/${name}/**/*.ts`], [forbid(["bin", ...EDGES.filter((other) => other !== name)], `${name}/ is an edge: edges never import each other or bin/`)])),
  // The plugin starts three times per signature: no native module, no grpc-js, no HSM code
  // (test/unit/layers.test.ts also checks the bundle's whole import closure).
  layer(
    ["src/plugin/**/*.ts", "src/client/**/*.ts"],
    [forbid(["hsm", "auth", "audit", "metrics", "bin", "server", "admin"], "the plugin and its client stay light (no HSM, auth, audit or metrics code), and edges never import each other")],
    NATIVE_OR_GRPC.map((name) => ({ name, message: "the plugin's import closure holds no native module and no grpc-js" })),
  ),
];
