import assert from "node:assert/strict";
import { join } from "node:path";
import { build } from "esbuild";
import { ESLint } from "eslint";
import tseslint from "typescript-eslint";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

/** The layer rules of eslint.layers.js, without the type-aware rules (which need files on disk). */
async function lintImport(file: string, source: string): Promise<string[]> {
  const { layerRules } = (await import(join(PROJECT_ROOT, "eslint.layers.js"))) as { layerRules: object[] };
  const eslint = new ESLint({ cwd: PROJECT_ROOT, overrideConfigFile: true, overrideConfig: [tseslint.configs.base as object, ...layerRules] });
  const [result] = await eslint.lintText(source, { filePath: join(PROJECT_ROOT, file) });
  return (result?.messages ?? []).map((m) => `${m.ruleId ?? "parse"}: ${m.message}`);
}

describe("layer rules (eslint.layers.js)", () => {
  it("refuse a deliberately wrong import: an edge importing another edge", async () => {
    const messages = await lintImport("src/plugin/wrong.ts", 'import { startSignerServer } from "../server/signer-server.js";\nexport const x = startSignerServer;\n');
    assert.equal(messages.length, 1, messages.join("\n"));
    assert.match(messages[0] ?? "", /no-restricted-imports: .*edges never import each other/);
  });

  it("refuse an upward import (the domain core importing an adapter) and grpc-js in the plugin", async () => {
    assert.match((await lintImport("src/signing/wrong.ts", 'import { openHsm } from "../hsm/index.js";\nexport const x = openHsm;\n'))[0] ?? "", /domain core/);
    assert.match((await lintImport("src/errors/wrong.ts", 'import { KEY_SPECS } from "../signing/key-spec.js";\nexport const x = KEY_SPECS;\n'))[0] ?? "", /bottom layer/);
    assert.match((await lintImport("src/client/wrong.ts", 'import * as grpc from "@grpc/grpc-js";\nexport const x = grpc;\n'))[0] ?? "", /no native module and no grpc-js/);
  });

  it("accept the imports the layers allow", async () => {
    assert.deepEqual(
      await lintImport("src/server/ok.ts", 'import { KEY_SPECS } from "../signing/key-spec.js";\nimport { AuditLog } from "../audit/index.js";\nexport const x = [KEY_SPECS, AuditLog];\n'),
      [],
    );
  });

  it("the plugin's whole import closure (the bundle's inputs) holds no native module, no grpc-js and no HSM code", async () => {
    const result = await build({
      entryPoints: [join(PROJECT_ROOT, "src/bin/notation-hsm-signer.ts")],
      bundle: true,
      platform: "node",
      format: "cjs",
      write: false,
      metafile: true,
      logLevel: "silent",
      define: { __PLUGIN_VERSION__: '"0.0.0"' },
    });
    const inputs = Object.keys(result.metafile.inputs);
    assert.ok(
      inputs.some((path) => path.includes("src/plugin/")),
      inputs.join("\n"),
    );
    const heavy = inputs.filter((path) => /node_modules\/(@grpc|graphene-pk11|pkcs11js|prom-client|pg)\/|src\/(hsm|server|admin|auth|audit|metrics)\//.test(path) || path.endsWith(".node"));
    assert.deepEqual(heavy, []);
  });
});
