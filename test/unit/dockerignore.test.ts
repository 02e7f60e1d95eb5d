import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, posix, relative } from "node:path";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

/** One .dockerignore line, as Docker's patternmatcher reads it. */
interface Rule {
  exclusion: boolean;
  regex: RegExp;
  text: string;
}

/** Docker's pattern syntax: `*` and `?` within one path element, `**` across any number of them. */
function toRegex(pattern: string): RegExp {
  let re = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string;
    if (c === "*" && pattern[i + 1] === "*") {
      i++;
      if (pattern[i + 1] === "/") {
        i++;
        re += "(?:.*/)?"; // "**/" matches zero or more directories
      } else re += ".*";
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

function parseDockerignore(text: string): Rule[] {
  const rules: Rule[] = [];
  for (const raw of text.split("\n")) {
    let line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const exclusion = line.startsWith("!");
    if (exclusion) line = line.slice(1).trim();
    const cleaned = posix.normalize(line).replace(/^\/+/, "").replace(/\/+$/, "");
    rules.push({ exclusion, regex: toRegex(cleaned), text: raw.trim() });
  }
  return rules;
}

/** Whether Docker leaves this context path out: the last rule that matches the path or one of its parent directories wins. */
function ignored(rules: Rule[], path: string): boolean {
  const parts = path.split("/");
  const candidates = parts.map((_, i) => parts.slice(0, i + 1).join("/"));
  let out = false;
  for (const rule of rules) if (candidates.some((c) => rule.regex.test(c))) out = !rule.exclusion;
  return out;
}

/** The sources of the Dockerfile's COPY instructions from the build context (not --from=another stage). */
function copySources(dockerfile: string): string[] {
  const sources: string[] = [];
  for (const line of dockerfile.replace(/\\\n/g, " ").split("\n")) {
    const m = /^\s*(?:COPY|ADD)\s+(.*)$/i.exec(line);
    if (!m) continue;
    const words = (m[1] as string).trim().split(/\s+/);
    if (words.some((w) => w.startsWith("--from"))) continue;
    const args = words.filter((w) => !w.startsWith("--"));
    sources.push(...args.slice(0, -1).map((s) => s.replace(/^\.\//, "").replace(/\/$/, "")));
  }
  return sources;
}

function* files(path: string): Generator<string> {
  if (statSync(path).isDirectory()) for (const name of readdirSync(path)) yield* files(join(path, name));
  else yield path;
}

describe(".dockerignore keeps secrets and build output out of the Docker build context", () => {
  const dockerignore = join(PROJECT_ROOT, ".dockerignore");
  const rules = existsSync(dockerignore) ? parseDockerignore(readFileSync(dockerignore, "utf8")) : [];
  const sources = copySources(readFileSync(join(PROJECT_ROOT, "Dockerfile"), "utf8"));

  it("the pattern reader follows Docker's rules (last match wins, parents count, ** spans folders)", () => {
    const r = parseDockerignore("*\n!src/\n**/*.pem\n");
    assert.equal(ignored(r, "README.md"), true);
    assert.equal(ignored(r, "src/a/b.ts"), false);
    assert.equal(ignored(r, "src/a/b.pem"), true);
    assert.equal(ignored(parseDockerignore("dist\n"), "dist/x/y.js"), true);
  });

  it("every file the Dockerfile COPYs is in the context", () => {
    assert.deepEqual(sources.sort(), ["package-lock.json", "package.json", "proto", "scripts", "src", "test", "tsconfig.json"]);
    for (const source of sources) {
      assert.equal(ignored(rules, source), false, `${source} is COPYed but ignored`);
      for (const file of files(join(PROJECT_ROOT, source))) {
        const rel = relative(PROJECT_ROOT, file);
        assert.equal(ignored(rules, rel), false, `${rel} (under COPY ${source}) is ignored`);
      }
    }
  });

  it("the quick start's .data (PINs, token, TLS keys), node_modules, dist, .git and key files are not", () => {
    const secret = [
      ".data",
      ".data/pin",
      ".data/so-pin",
      ".data/tokens/0a1b/token.object",
      ".data/tls/server-key.pem",
      ".data/config.yaml",
      "node_modules/graphene-pk11/package.json",
      "dist/hsm-signer",
      "dist/plugin/notation-hsm-signer",
      ".git/config",
      ".git/objects/ab/cdef",
      "server-key.pem",
      "tls.key",
      ".env",
      "deploy/base/config.yaml",
      // Also inside the folders the Dockerfile does copy.
      "src/.data/pin",
      "test/fixtures/leaked-key.pem",
      "scripts/dev.key",
      "scripts/node_modules/x/index.js",
      "test/dist/x.js",
      "src/pin",
    ];
    for (const path of secret) assert.equal(ignored(rules, path), true, `${path} would be sent to the Docker daemon`);
    // Whatever the quick start has actually put there.
    const data = join(PROJECT_ROOT, ".data");
    if (existsSync(data)) for (const file of files(data)) assert.equal(ignored(rules, relative(PROJECT_ROOT, file)), true, file);
  });
});

/** The instructions of one stage of the Dockerfile (from its FROM to the next), continuation lines joined. */
function stage(dockerfile: string, name: string): string[] {
  const lines = dockerfile.replace(/\\\n/g, " ").split("\n");
  const start = lines.findIndex((l) => new RegExp(`^FROM\\s+\\S+\\s+AS\\s+${name}\\s*$`, "i").test(l));
  assert.ok(start >= 0, `no stage ${name}`);
  const end = lines.findIndex((l, i) => i > start && /^FROM\s/i.test(l));
  return lines.slice(start, end < 0 ? undefined : end);
}

describe("the runtime image", () => {
  const dockerfile = readFileSync(join(PROJECT_ROOT, "Dockerfile"), "utf8");

  it("runs as uid 10001 and leaves out the base image's package managers, which the service never runs", () => {
    const runtime = stage(dockerfile, "runtime");
    assert.ok(runtime.some((l) => /^USER\s+10001:10001\s*$/.test(l)));
    const removed = runtime.filter((l) => /^RUN\s/.test(l)).join(" ");
    for (const path of [
      "/usr/local/lib/node_modules/npm",
      "/usr/local/lib/node_modules/corepack",
      "/usr/local/bin/npm",
      "/usr/local/bin/npx",
      "/usr/local/bin/corepack",
      "/usr/local/bin/yarn",
      "/opt/yarn-v*",
    ]) {
      assert.match(removed, new RegExp(`rm -rf [^&]*${path.replace(/[.*]/g, (c) => `\\${c}`)}(\\s|$)`), `the runtime stage keeps ${path}`);
    }
    // Nothing after the removal runs npm in that image (the softhsm stage builds on it).
    for (const l of dockerfile.split("\n").slice(dockerfile.split("\n").findIndex((x) => /^FROM\s+\S+\s+AS\s+runtime/i.test(x)))) {
      assert.doesNotMatch(l, /^RUN\s.*\b(npm|npx|yarn|corepack)\s/, l);
    }
  });
});
