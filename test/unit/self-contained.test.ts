import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { NOTATION_FIXTURES } from "../helpers/notation.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

/**
 * A user's clone has nothing beside it: no file the project builds, runs or tests with may reach
 * outside the project folder (issue 11 §1: the fixtures once came from a folder beside the clone).
 */
const SCANNED = ["src", "test", "scripts", "proto", "deploy", ".ci", "package.json", "Dockerfile", "tsconfig.json", ".mocharc.json"];
// The sibling folder's name is spelled in pieces so that this guard does not match itself.
const SIBLING = ["sha", "red"].join("");
const OUTSIDE = new RegExp(`\\.\\./${SIBLING}\\b|/work/${SIBLING}\\b|${SIBLING}/(fixtures|docs)/`);

function* files(path: string): Generator<string> {
  if (!existsSync(path)) return;
  if (statSync(path).isDirectory()) {
    for (const name of readdirSync(path)) if (name !== "node_modules") yield* files(join(path, name));
  } else yield path;
}

describe("the project is self-contained", () => {
  it("no source, test, script or deployment file refers to a folder beside the project", () => {
    const offenders: string[] = [];
    for (const top of SCANNED)
      for (const file of files(join(PROJECT_ROOT, top))) {
        if (/\.(tar\.gz|der|png)$/.test(file)) continue;
        const text = readFileSync(file, "utf8");
        text.split("\n").forEach((line, i) => {
          if (OUTSIDE.test(line)) offenders.push(`${relative(PROJECT_ROOT, file)}:${i + 1}: ${line.trim()}`);
        });
      }
    assert.deepEqual(offenders, []);
  });

  it("notation's captured requests are committed inside the project", () => {
    assert.ok(NOTATION_FIXTURES.startsWith(PROJECT_ROOT), NOTATION_FIXTURES);
    for (const name of ["describe-key", "generate-signature-jws", "generate-signature-cose", "get-plugin-metadata", "get-plugin-metadata-plugin-ls"]) {
      const doc = JSON.parse(readFileSync(join(NOTATION_FIXTURES, `${name}.json`), "utf8")) as { contractVersion?: string };
      if (name.startsWith("get-plugin-metadata")) assert.equal(typeof doc, "object", name);
      else assert.equal(doc.contractVersion, "1.0", name);
    }
  });
});
