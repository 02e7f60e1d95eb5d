import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

/** The command lines of the README's sh blocks, continuation lines joined. */
function shCommands(readme: string): string[] {
  const out: string[] = [];
  for (const block of readme.matchAll(/```sh\n([\s\S]*?)```/g))
    out.push(
      ...(block[1] as string)
        .replace(/\\\n\s*/g, " ")
        .split("\n")
        .map((l) => l.replace(/\s+#.*$/, "").trim())
        .filter(Boolean),
    );
  return out;
}

/**
 * The README once said the OCI layout "works the same way" and showed only `sign`, but notation
 * 1.3's `verify --oci-layout` refuses to run without `--scope`, and `inspect` has no
 * `--oci-layout` at all.
 */
describe("README: notation with an OCI layout, as notation 1.3 takes it", () => {
  const readme = readFileSync(join(PROJECT_ROOT, "README.md"), "utf8");
  const commands = shCommands(readme);
  const layout = commands.filter((c) => c.startsWith("notation ") && c.includes("--oci-layout"));

  it("shows sign, verify and ls of a layout, with NOTATION_EXPERIMENTAL=1", () => {
    for (const verb of ["sign", "verify", "ls"])
      assert.ok(
        layout.some((c) => c.startsWith(`notation ${verb} `)),
        `no "notation ${verb} --oci-layout" line`,
      );
    assert.ok(commands.includes("export NOTATION_EXPERIMENTAL=1"));
  });

  it("every verify --oci-layout names a --scope that a trust policy's registryScopes in the README lists", () => {
    const scopes = [...readme.matchAll(/"registryScopes": \[([^\]]*)\]/g)].flatMap((m) => [...(m[1] as string).matchAll(/"([^"]+)"/g)].map((s) => s[1] as string));
    for (const c of layout.filter((l) => l.startsWith("notation verify "))) {
      const scope = /--scope (\S+)/.exec(c)?.[1];
      assert.ok(scope, `no --scope: ${c}`);
      assert.match(scope, /^[^/\s]+\/\S+$/, "a scope is domain/repo");
      assert.ok(scopes.includes(scope), `--scope ${scope} is in no registryScopes shown`);
    }
  });

  it("shows every layout reference with its digest, and no inspect --oci-layout (registries only in notation 1.3)", () => {
    for (const c of layout) assert.match(c, /\S+@sha256:<digest>$/, c);
    assert.ok(!layout.some((c) => c.startsWith("notation inspect ")));
  });
});
