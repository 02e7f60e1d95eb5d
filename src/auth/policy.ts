import { watch, type FSWatcher } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, dirname, resolve } from "node:path";
import { parseDocument } from "yaml";
import { SignerError } from "../errors/index.js";
import type { Logger } from "../log/index.js";
import type { CallerIdentity, MtlsIdentitySource } from "./identity.js";
import type { TokenBucketSpec } from "./rate-limiter.js";

/** The Signer methods a rule can name; a rule without `methods` gets all of them. */
export const SIGNER_METHODS = ["Sign", "DescribeKey", "GetCertificateChain", "ListKeys"] as const;
export type SignerMethod = (typeof SIGNER_METHODS)[number];

/** Wait after the last file event or SIGHUP before reloading: editors write a file in several steps. */
export const POLICY_RELOAD_DEBOUNCE_MS = 100;

export interface RateLimitSpec {
  ratePerSecond: number;
  burst: number;
}

export interface PolicyDecision {
  allow: boolean;
  /** The rule that allowed the call (none when keys are public or the call is denied). */
  rule?: string;
  /** Why, for the audit record and the service log. */
  reason: string;
  /** When allowed: whether a version other than the key's current one may be used. */
  allowOldVersions?: boolean;
}

/** A policy that failed validation; `problems` lists every one of them. */
export class PolicyInvalidError extends SignerError {
  constructor(
    readonly source: string,
    readonly problems: readonly string[],
  ) {
    super("CONFIG_INVALID", `policy ${source} has ${problems.length} problem(s):\n  - ${problems.join("\n  - ")}`);
  }
}

/** Policy globs: `*` any run of characters (including "/"), `?` one character, the rest literal, anchored. */
class Glob {
  private readonly re: RegExp;

  constructor(readonly pattern: string) {
    let src = "";
    for (const ch of pattern) {
      if (ch === "*") src += "[\\s\\S]*";
      else if (ch === "?") src += "[\\s\\S]";
      else src += ch.replace(/[\\^$.|+()[\]{}]/g, "\\$&");
    }
    this.re = new RegExp(`^${src}$`, "u");
  }

  matches(value: string): boolean {
    return this.re.test(value);
  }
}

/**
 * One identity pattern: a certificate identity of one kind (URI SAN, DNS SAN or CN), a JWT issuer
 * with claims, or the anonymous caller.
 */
type Matcher = { kind: "mtls"; source: MtlsIdentitySource; id: Glob } | { kind: "jwt"; issuer: Glob; claims: { name: string; patterns: Glob[] }[] } | { kind: "anonymous" };

/** Claim values compare as strings; an array claim matches when any element does. */
function claimStrings(v: unknown): string[] {
  if (typeof v === "string") return [v];
  if (typeof v === "number" || typeof v === "boolean") return [String(v)];
  if (Array.isArray(v)) return v.flatMap((e) => (Array.isArray(e) ? [] : claimStrings(e)));
  return [];
}

function matches(m: Matcher, caller: CallerIdentity): boolean {
  switch (m.kind) {
    case "mtls":
      // The kinds never mix: a CN that reads "spiffe://..." is not a URI SAN.
      return caller.kind === "mtls" && caller.source === m.source && m.id.matches(caller.subject);
    case "anonymous":
      return caller.kind === "anonymous";
    case "jwt":
      return (
        caller.kind === "jwt" &&
        caller.issuer !== undefined &&
        m.issuer.matches(caller.issuer) &&
        m.claims.every(({ name, patterns }) => {
          const values = claimStrings(caller.claims?.[name]);
          return values.some((v) => patterns.some((p) => p.matches(v)));
        })
      );
  }
}

interface Rule {
  name: string;
  match: Matcher[];
  keys: Glob[];
  methods: ReadonlySet<SignerMethod>;
  allowOldVersions: boolean;
  rateLimit?: RateLimitSpec;
}

interface PolicyData {
  keysPublic: boolean;
  allowAnonymousOnLoopback: boolean;
  custodians: Matcher[];
  perIdentity?: RateLimitSpec;
  perKey?: RateLimitSpec;
  rules: Rule[];
}

type Obj = Record<string, unknown>;

const MTLS_SOURCES: readonly MtlsIdentitySource[] = ["uri", "dns", "cn"];

/** Turns the parsed document into PolicyData, collecting every problem instead of stopping at the first. */
class PolicyParser {
  readonly problems: string[] = [];

  parse(root: unknown): PolicyData {
    const top = this.mapping(root, "policy", ["keysPublic", "allowAnonymousOnLoopback", "custodians", "rateLimits", "rules"]) ?? {};
    const keysPublic = this.bool(top.keysPublic, "keysPublic") ?? false;
    const allowAnonymousOnLoopback = this.bool(top.allowAnonymousOnLoopback, "allowAnonymousOnLoopback") ?? false;
    const custodians = this.list(top.custodians, "custodians", false).flatMap((m, i) => this.matcher(m, `custodians[${i}]`) ?? []);
    custodians.forEach((m, i) => {
      if (m.kind === "anonymous") this.problems.push(`custodians[${i}]: a custodian cannot be anonymous`);
    });
    const limits = top.rateLimits === undefined ? {} : (this.mapping(top.rateLimits, "rateLimits", ["perIdentity", "perKey"]) ?? {});
    const perIdentity = limits.perIdentity === undefined ? undefined : this.rateLimit(limits.perIdentity, "rateLimits.perIdentity");
    const perKey = limits.perKey === undefined ? undefined : this.rateLimit(limits.perKey, "rateLimits.perKey");
    // `rules` is required (an empty list is fine): a truncated or half-written file then fails
    // instead of silently denying everything.
    if (top.rules === undefined) this.problems.push("rules: required (a list; an empty list denies every call)");
    const rules = this.list(top.rules, "rules", false).flatMap((r, i) => this.rule(r, i, allowAnonymousOnLoopback) ?? []);
    const seen = new Set<string>();
    for (const r of rules) {
      if (seen.has(r.name)) this.problems.push(`rules: the name "${r.name}" is used more than once`);
      seen.add(r.name);
    }
    return { keysPublic, allowAnonymousOnLoopback, custodians, perIdentity, perKey, rules };
  }

  private rule(raw: unknown, i: number, anonymousAllowed: boolean): Rule | undefined {
    const where = `rules[${i}]`;
    const o = this.mapping(raw, where, ["name", "match", "keys", "methods", "allowOldVersions", "rateLimit"]);
    if (!o) return undefined;
    const name = this.string(o.name, `${where}.name`);
    const label = name === undefined ? where : `${where} (${name})`;
    let match: Matcher[] = [];
    if (o.match === undefined) this.problems.push(`${label}.match: required`);
    else if (Array.isArray(o.match)) {
      if (o.match.length === 0) this.problems.push(`${label}.match: must not be empty`);
      match = o.match.flatMap((m, j) => this.matcher(m, `${label}.match[${j}]`) ?? []);
    } else match = [this.matcher(o.match, `${label}.match`)].flatMap((m) => m ?? []);
    if (!anonymousAllowed && match.some((m) => m.kind === "anonymous")) {
      this.problems.push(`${label}.match: anonymous callers need allowAnonymousOnLoopback: true`);
    }
    if (o.keys === undefined) this.problems.push(`${label}.keys: required (a list of key id globs, e.g. ["release-*"])`);
    const keys = this.list(o.keys, `${label}.keys`, true).flatMap((k, j) => {
      const s = this.string(k, `${label}.keys[${j}]`);
      return s === undefined ? [] : [new Glob(s)];
    });
    let methods: Set<SignerMethod> = new Set(SIGNER_METHODS);
    if (o.methods !== undefined) {
      methods = new Set();
      this.list(o.methods, `${label}.methods`, true).forEach((m, j) => {
        if (typeof m === "string" && (SIGNER_METHODS as readonly string[]).includes(m)) methods.add(m as SignerMethod);
        else this.problems.push(`${label}.methods[${j}]: ${JSON.stringify(m)} is not one of ${SIGNER_METHODS.join(", ")}`);
      });
    }
    const allowOldVersions = this.bool(o.allowOldVersions, `${label}.allowOldVersions`) ?? false;
    const rateLimit = o.rateLimit === undefined ? undefined : this.rateLimit(o.rateLimit, `${label}.rateLimit`);
    if (name === undefined) return undefined;
    return { name, match, keys, methods, allowOldVersions, rateLimit };
  }

  private matcher(raw: unknown, where: string): Matcher | undefined {
    const o = this.mapping(raw, where, ["mtls", "jwt", "anonymous"]);
    if (!o) return undefined;
    const kinds = ["mtls", "jwt", "anonymous"].filter((k) => o[k] !== undefined);
    if (kinds.length !== 1) {
      this.problems.push(`${where}: needs exactly one of mtls, jwt, anonymous${kinds.length > 1 ? ` (found ${kinds.join(", ")})` : ""}`);
      return undefined;
    }
    if (o.mtls !== undefined) return this.mtlsMatcher(o.mtls, `${where}.mtls`);
    if (o.anonymous !== undefined) {
      if (o.anonymous !== true) {
        this.problems.push(`${where}.anonymous: must be true`);
        return undefined;
      }
      return { kind: "anonymous" };
    }
    const j = this.mapping(o.jwt, `${where}.jwt`, ["issuer", "claims"]);
    if (!j) return undefined;
    const issuer = this.string(j.issuer, `${where}.jwt.issuer`);
    const claims: { name: string; patterns: Glob[] }[] = [];
    const c = j.claims === undefined ? {} : this.mapping(j.claims, `${where}.jwt.claims`);
    for (const [name, v] of Object.entries(c ?? {})) {
      const values = Array.isArray(v) ? v : [v];
      if (values.length === 0) this.problems.push(`${where}.jwt.claims.${name}: must not be an empty list`);
      const patterns: Glob[] = [];
      for (const x of values) {
        if (typeof x === "string" || typeof x === "number" || typeof x === "boolean") patterns.push(new Glob(String(x)));
        else this.problems.push(`${where}.jwt.claims.${name}: must be a string (glob), a number, a boolean or a list of them`);
      }
      claims.push({ name, patterns });
    }
    return issuer === undefined ? undefined : { kind: "jwt", issuer: new Glob(issuer), claims };
  }

  /**
   * `mtls: "<glob>"` matches URI SANs (what it always meant for them); `mtls: { uri | dns | cn:
   * "<glob>" }` names the kind. A bare pattern that starts with "dns:", "cn:" or "uri:" is
   * refused: it would match only a URI SAN of that form, never what its author meant.
   */
  private mtlsMatcher(raw: unknown, where: string): Matcher | undefined {
    if (typeof raw === "string") {
      const prefix = /^(dns|cn|uri):/i.exec(raw)?.[1]?.toLowerCase();
      if (prefix === "uri") {
        this.problems.push(`${where}: ${JSON.stringify(raw)} would match only a URI SAN that starts with "uri:"; a bare pattern already means a URI SAN, write mtls: ${JSON.stringify(raw.slice(4))}`);
        return undefined;
      }
      if (prefix === "dns" || prefix === "cn") {
        this.problems.push(
          `${where}: ${JSON.stringify(raw)} would match only a URI SAN that reads so; for a ${prefix === "dns" ? "DNS SAN" : "certificate CN"} write mtls: { ${prefix}: ${JSON.stringify(raw.slice(prefix.length + 1))} } (or mtls: { uri: ${JSON.stringify(raw)} } for such a URI SAN)`,
        );
        return undefined;
      }
    }
    if (typeof raw === "object" && raw !== null && !Array.isArray(raw)) {
      const o = this.mapping(raw, where, ["uri", "dns", "cn"]);
      if (!o) return undefined;
      const kinds = MTLS_SOURCES.filter((k) => o[k] !== undefined);
      if (kinds.length !== 1) {
        this.problems.push(`${where}: needs exactly one of uri, dns, cn${kinds.length > 1 ? ` (found ${kinds.join(", ")})` : ""}`);
        return undefined;
      }
      const source = kinds[0] as MtlsIdentitySource;
      const id = this.string(o[source], `${where}.${source}`);
      return id === undefined ? undefined : { kind: "mtls", source, id: new Glob(id) };
    }
    if (typeof raw !== "string") {
      this.problems.push(`${where}: must be a URI SAN glob or a mapping with one of uri, dns, cn`);
      return undefined;
    }
    const id = this.string(raw, where);
    return id === undefined ? undefined : { kind: "mtls", source: "uri", id: new Glob(id) };
  }

  private rateLimit(raw: unknown, where: string): RateLimitSpec | undefined {
    const o = this.mapping(raw, where, ["ratePerSecond", "burst"]);
    if (!o) return undefined;
    const rate = o.ratePerSecond;
    const burst = o.burst;
    const rateOk = typeof rate === "number" && Number.isFinite(rate) && rate > 0;
    const burstOk = typeof burst === "number" && Number.isInteger(burst) && burst >= 1;
    if (!rateOk) this.problems.push(`${where}.ratePerSecond: must be a number above 0`);
    if (!burstOk) this.problems.push(`${where}.burst: must be an integer of at least 1`);
    return rateOk && burstOk ? { ratePerSecond: rate, burst } : undefined;
  }

  /** `where` names the value in problems; the top level is "policy", but its keys are named bare. */
  private mapping(v: unknown, where: string, known?: string[]): Obj | undefined {
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      this.problems.push(`${where}: must be a mapping`);
      return undefined;
    }
    const prefix = where === "policy" ? "" : `${where}.`;
    if (known) for (const k of Object.keys(v)) if (!known.includes(k)) this.problems.push(`${prefix}${k}: unknown setting`);
    return v as Obj;
  }

  private list(v: unknown, where: string, nonEmpty: boolean): unknown[] {
    if (v === undefined) return [];
    if (!Array.isArray(v)) {
      this.problems.push(`${where}: must be a list`);
      return [];
    }
    if (nonEmpty && v.length === 0) this.problems.push(`${where}: must not be empty`);
    return v;
  }

  private string(v: unknown, where: string): string | undefined {
    if (typeof v === "string" && v.length > 0) return v;
    this.problems.push(`${where}: ${v === undefined ? "required" : "must be a non-empty string"}`);
    return undefined;
  }

  private bool(v: unknown, where: string): boolean | undefined {
    if (v === undefined || typeof v === "boolean") return v;
    this.problems.push(`${where}: must be true or false`);
    return undefined;
  }
}

function deny(reason: string): PolicyDecision {
  return { allow: false, reason };
}

/**
 * Who may call which Signer method on which key. Deny by default: a call is allowed only by a
 * rule whose identity matcher, key globs and methods all cover it, or for the read-only methods
 * when keys are public. Immutable once parsed; PolicyStore swaps whole policies on reload.
 */
export class Policy {
  readonly keysPublic: boolean;
  readonly allowAnonymousOnLoopback: boolean;
  /** Rule names in evaluation order (the first rule that allows a call is the one reported). */
  readonly ruleNames: readonly string[];
  private readonly data: PolicyData;
  private readonly rulesByName: ReadonlyMap<string, Rule>;

  private constructor(data: PolicyData) {
    this.data = data;
    this.keysPublic = data.keysPublic;
    this.allowAnonymousOnLoopback = data.allowAnonymousOnLoopback;
    this.ruleNames = Object.freeze(data.rules.map((r) => r.name));
    this.rulesByName = new Map(data.rules.map((r) => [r.name, r]));
  }

  /** Parses YAML or JSON (JSON is YAML); throws PolicyInvalidError (CONFIG_INVALID) listing every problem. */
  static parse(text: string, source: string): Policy {
    // prettyErrors puts "at line L, column C" in each message; the code frame after it is dropped.
    const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true });
    if (doc.errors.length > 0)
      throw new PolicyInvalidError(
        source,
        doc.errors.map((e) => (e.message.split("\n")[0] ?? e.message).replace(/:$/, "")),
      );
    const root: unknown = doc.toJS();
    // An empty file is more likely a half-written one than a wish to deny everything.
    if (root === undefined || root === null) throw new PolicyInvalidError(source, ["the policy is empty (write `rules: []` to deny every call)"]);
    const parser = new PolicyParser();
    const data = parser.parse(root);
    if (parser.problems.length > 0) throw new PolicyInvalidError(source, parser.problems);
    return new Policy(data);
  }

  static async load(file: string): Promise<Policy> {
    return Policy.parse(await readPolicyText(file), file);
  }

  decide(caller: CallerIdentity, method: string, keyId: string | undefined): PolicyDecision {
    if (!isSignerMethod(method)) return deny(`unknown method ${method}`);
    if (caller.kind === "anonymous" && !this.allowAnonymousOnLoopback) return deny("the policy does not allow anonymous callers");
    // Without a key id the key globs below would be skipped: only ListKeys may omit it. An empty
    // id goes through the globs like any other, so a malformed request reaches argument checks.
    if (method !== "ListKeys" && keyId === undefined) return deny(`${method} needs a key id`);
    if (method !== "Sign" && this.keysPublic) return { allow: true, reason: "keys are public", allowOldVersions: true };
    let callerMatched = false;
    for (const rule of this.data.rules) {
      if (!rule.match.some((m) => matches(m, caller))) continue;
      callerMatched = true;
      if (!rule.methods.has(method)) continue;
      if (keyId !== undefined && !rule.keys.some((k) => k.matches(keyId))) continue;
      return { allow: true, rule: rule.name, reason: `allowed by rule ${rule.name}`, allowOldVersions: rule.allowOldVersions };
    }
    const what = keyId === undefined ? method : `${method} on key ${keyId}`;
    return deny(callerMatched ? `no rule allows ${caller.id} ${what}` : `no rule matches caller ${caller.id} (${describeKind(caller)}), so ${what} is denied`);
  }

  /** Whether ListKeys shows this key to the caller: keys are public, or a rule for the caller covers it (any method). */
  mayUseKey(caller: CallerIdentity, keyId: string): boolean {
    if (caller.kind === "anonymous" && !this.allowAnonymousOnLoopback) return false;
    if (this.keysPublic) return true;
    return this.data.rules.some((r) => r.match.some((m) => matches(m, caller)) && r.keys.some((k) => k.matches(keyId)));
  }

  /** Whether the caller may administer keys (the KeyAdmin service). Never an anonymous caller. */
  isCustodian(caller: CallerIdentity): boolean {
    return caller.kind !== "anonymous" && this.data.custodians.some((m) => matches(m, caller));
  }

  /**
   * The buckets one call draws from: the caller's own, the key's, and the caller's under the rule
   * that allowed it (`rule` as returned by decide). Bucket keys are unambiguous tuples, so a
   * crafted identity cannot share another's bucket.
   */
  rateLimitsFor(caller: CallerIdentity, keyId: string | undefined, rule?: string): TokenBucketSpec[] {
    const specs: TokenBucketSpec[] = [];
    const { perIdentity, perKey } = this.data;
    if (perIdentity) specs.push({ key: JSON.stringify(["identity", caller.kind, caller.source ?? "", caller.id]), ...perIdentity });
    if (perKey && keyId !== undefined) specs.push({ key: JSON.stringify(["key", keyId]), ...perKey });
    const r = rule === undefined ? undefined : this.rulesByName.get(rule);
    if (r?.rateLimit) specs.push({ key: JSON.stringify(["rule", r.name, caller.kind, caller.source ?? "", caller.id]), ...r.rateLimit });
    return specs;
  }
}

function describeKind(caller: CallerIdentity): string {
  if (caller.kind !== "mtls") return caller.kind;
  return `mtls, ${caller.source === "cn" ? "certificate CN" : caller.source === "dns" ? "DNS SAN" : caller.source === "uri" ? "URI SAN" : "unknown field"}`;
}

function isSignerMethod(m: string): m is SignerMethod {
  return (SIGNER_METHODS as readonly string[]).includes(m);
}

async function readPolicyText(file: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
  } catch (e) {
    throw new PolicyInvalidError(file, [`cannot read the file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`]);
  }
}

/**
 * The policy in force, reloaded on SIGHUP and when its file changes. An invalid new policy is
 * logged with every problem and the previous one stays in force, so a bad edit never opens or
 * closes access by accident.
 */
export class PolicyStore {
  private policy: Policy;
  /** The last text read (applied or rejected), so repeated file events for one edit reload once. */
  private lastText: string;
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** A pending SIGHUP reloads even an unchanged file: the operator asked, so they get a log line. */
  private forceNext = false;
  /** Reloads run one at a time, in order. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly onSighup = (): void => this.schedule(true);

  private constructor(
    readonly file: string,
    private readonly logger: Logger,
    policy: Policy,
    text: string,
  ) {
    this.policy = policy;
    this.lastText = text;
  }

  /** Loads the policy; an invalid policy at start-up throws CONFIG_INVALID (there is nothing to keep). */
  static async open(file: string, logger: Logger): Promise<PolicyStore> {
    const path = resolve(file);
    const text = await readPolicyText(path);
    const store = new PolicyStore(path, logger, Policy.parse(text, path), text);
    logger.info("policy loaded", { file: path, rules: store.policy.ruleNames.length });
    return store;
  }

  get current(): Policy {
    return this.policy;
  }

  /** Re-reads the file now. true: the new policy is in force; false: rejected (logged), the old one stays. */
  reload(): Promise<boolean> {
    return this.enqueue(() => this.load(false));
  }

  /** Reloads on SIGHUP and when the file changes, debounced. Watches the directory because editors and Kubernetes replace files. */
  watch(): void {
    if (this.watcher) return;
    const name = basename(this.file);
    this.watcher = watch(dirname(this.file), { persistent: false }, (_event, filename) => {
      // Kubernetes ConfigMaps swap a "..data" symlink instead of touching the file itself.
      if (filename === null || filename === name || filename.startsWith("..")) this.schedule(false);
    });
    this.watcher.on("error", (e) => {
      this.logger.warn("policy file watch failed; reload with SIGHUP", { file: this.file, error: e });
      this.watcher?.close();
      this.watcher = undefined;
    });
    process.on("SIGHUP", this.onSighup);
  }

  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.watcher?.close();
    this.watcher = undefined;
    process.off("SIGHUP", this.onSighup);
  }

  private schedule(force: boolean): void {
    this.forceNext ||= force;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const onlyIfChanged = !this.forceNext;
      this.forceNext = false;
      this.enqueue(() => this.load(onlyIfChanged)).catch((e: unknown) => this.logger.error("policy reload failed", { file: this.file, error: e }));
    }, POLICY_RELOAD_DEBOUNCE_MS);
    this.timer.unref();
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async load(onlyIfChanged: boolean): Promise<boolean> {
    try {
      const text = await readPolicyText(this.file);
      if (onlyIfChanged && text === this.lastText) return true;
      this.lastText = text;
      const next = Policy.parse(text, this.file);
      this.policy = next;
      this.logger.info("policy reloaded", { file: this.file, rules: next.ruleNames.length });
      return true;
    } catch (e) {
      if (!(e instanceof PolicyInvalidError)) throw e;
      this.logger.error(`policy ${this.file} rejected, the previous policy stays in force: ${e.problems.join("; ")}`, { file: this.file, problems: e.problems });
      return false;
    }
  }
}
