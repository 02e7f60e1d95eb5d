import { resolve } from "node:path";
import * as v from "valibot";
import { SignerError } from "../errors/index.js";
import { readRegularFile, regularFileProblem } from "../fs/regular-file.js";
import { ReloadTrigger } from "../fs/reload-trigger.js";
import type { Logger } from "../log/index.js";
import { at, deepFreeze, isMapping, mapping, nonEmptyString, parseYamlText, validate } from "../schema/index.js";
import type { CallerIdentity, MtlsIdentitySource } from "./identity.js";
import { SIGNER_METHODS, type SignerMethod } from "../signing/ports.js";
import type { TokenBucketSpec } from "./rate-limiter.js";

// The Signer methods a rule can name are signing/'s SIGNER_METHODS; a rule without `methods` gets
// all of them.
export { SIGNER_METHODS, type SignerMethod };

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

  /** ignoreCase: for DNS names, which compare without case (RFC 4343). */
  constructor(
    readonly pattern: string,
    ignoreCase = false,
  ) {
    let src = "";
    for (const ch of pattern) {
      if (ch === "*") src += "[\\s\\S]*";
      else if (ch === "?") src += "[\\s\\S]";
      else src += ch.replace(/[\\^$.|+()[\]{}]/g, "\\$&");
    }
    this.re = new RegExp(`^${src}$`, ignoreCase ? "ui" : "u");
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
const MATCHER_KINDS = ["mtls", "jwt", "anonymous"] as const;

// The policy file's schema. It checks the document's shape and lists every problem at once; the
// rules between parts (a custodian or a rule naming anonymous callers, rule names used twice) run
// on the raw document, so that they are listed even when another part is invalid.

const TRUE_OR_FALSE = "must be true or false";
const flag = v.optional(v.boolean(TRUE_OR_FALSE), false);

/** Reports `message` about the value itself, whatever else was found (a check that never passes). */
const problem = <T>(message: string) => v.rawCheck<T>(({ addIssue }) => addIssue({ message }));
/** A schema that only reports `message`, checking nothing below the value. */
const refuse = (message: string) => v.pipe(v.unknown(), problem(message));

/** A mapping that names exactly one of `kinds`, each checked by its schema; with none or several, that alone (and unknown keys) is reported. */
function exactlyOne<K extends string>(kinds: readonly K[], schemas: Record<K, v.GenericSchema>) {
  const loose = Object.fromEntries(kinds.map((k) => [k, v.optional(v.unknown())]));
  const strict = Object.fromEntries(kinds.map((k) => [k, v.optional(schemas[k])]));
  return v.lazy((input) => {
    if (!isMapping(input)) return mapping({});
    const found = kinds.filter((k) => input[k] !== undefined);
    if (found.length === 1) return mapping(strict);
    return v.pipe(mapping(loose), problem(`needs exactly one of ${kinds.join(", ")}${found.length > 1 ? ` (found ${found.join(", ")})` : ""}`));
  });
}

/** Why a bare `mtls:` pattern (a URI SAN glob) is refused, if it is. */
function bareMtlsProblem(raw: string): string | undefined {
  const prefix = /^(dns|cn|uri):/i.exec(raw)?.[1]?.toLowerCase();
  if (prefix === "uri") return `${JSON.stringify(raw)} would match only a URI SAN that starts with "uri:"; a bare pattern already means a URI SAN, write mtls: ${JSON.stringify(raw.slice(4))}`;
  if (prefix === "dns" || prefix === "cn")
    return `${JSON.stringify(raw)} would match only a URI SAN that reads so; for a ${prefix === "dns" ? "DNS SAN" : "certificate CN"} write mtls: { ${prefix}: ${JSON.stringify(raw.slice(prefix.length + 1))} } (or mtls: { uri: ${JSON.stringify(raw)} } for such a URI SAN)`;
  if (raw === "") return "must be a non-empty string";
  return undefined;
}

/**
 * `mtls: "<glob>"` matches URI SANs (what it always meant for them); `mtls: { uri | dns | cn:
 * "<glob>" }` names the kind. A bare pattern that starts with "dns:", "cn:" or "uri:" is
 * refused: it would match only a URI SAN of that form, never what its author meant.
 */
const mtlsSchema = v.lazy((input) => {
  if (typeof input === "string")
    return v.custom<string>(
      (s) => typeof s === "string" && bareMtlsProblem(s) === undefined,
      (issue) => bareMtlsProblem(issue.input as string) ?? "invalid",
    );
  if (isMapping(input)) return exactlyOne(MTLS_SOURCES, { uri: nonEmptyString(), dns: nonEmptyString(), cn: nonEmptyString() });
  return refuse("must be a URI SAN glob or a mapping with one of uri, dns, cn");
});

const CLAIM_VALUE = "must be a string (glob), a number, a boolean or a list of them";
const claimScalar = v.custom<string | number | boolean>((x) => typeof x === "string" || typeof x === "number" || typeof x === "boolean", CLAIM_VALUE);
const claimSchema = v.lazy((input) => (Array.isArray(input) ? v.pipe(v.array(claimScalar), v.minLength(1, "must not be an empty list")) : claimScalar));

/**
 * Claims are required: an issuer alone admits every token it mints for this audience (with GitHub
 * Actions, every workflow of every repository). `sub: "*"` admits them all, written on purpose.
 */
const JWT_CLAIMS_REQUIRED =
  'required: an issuer alone admits every token it issues for this audience (with GitHub Actions: any workflow of any repository); name the claims that pick your callers, e.g. { repository: "corp/app" }, or write { sub: "*" } to admit them all';
const jwtMatcherSchema = mapping(
  {
    issuer: nonEmptyString(),
    claims: v.pipe(
      v.custom<Obj>(isMapping, "must be a mapping"),
      v.record(v.string(), claimSchema),
      v.check((c) => Object.keys(c).length > 0, `must name at least one claim: ${JWT_CLAIMS_REQUIRED.slice("required: ".length)}`),
    ),
  },
  { claims: JWT_CLAIMS_REQUIRED },
);

const matcherSchema = exactlyOne(MATCHER_KINDS, { mtls: mtlsSchema, jwt: jwtMatcherSchema, anonymous: v.literal(true, "must be true") });

const RATE = "must be a number above 0";
const BURST = "must be an integer of at least 1";
const rateLimitSchema = mapping(
  {
    ratePerSecond: v.custom<number>((r) => typeof r === "number" && Number.isFinite(r) && r > 0, RATE),
    burst: v.custom<number>((b) => typeof b === "number" && Number.isInteger(b) && b >= 1, BURST),
  },
  { ratePerSecond: RATE, burst: BURST },
);

const nonEmptyList = <S extends v.GenericSchema>(item: S) => v.pipe(v.array(item, "must be a list"), v.minLength(1, "must not be empty"));

const ruleSchema = mapping(
  {
    name: nonEmptyString(),
    match: v.lazy((input) => (Array.isArray(input) ? nonEmptyList(matcherSchema) : matcherSchema)),
    keys: nonEmptyList(nonEmptyString()),
    methods: v.optional(
      nonEmptyList(
        v.custom<SignerMethod>(
          (m) => typeof m === "string" && isSignerMethod(m),
          (issue) => `${JSON.stringify(issue.input)} is not one of ${SIGNER_METHODS.join(", ")}`,
        ),
      ),
    ),
    allowOldVersions: flag,
    rateLimit: v.optional(rateLimitSchema),
  },
  { keys: 'required (a list of key id globs, e.g. ["release-*"])' },
);

const isAnonymousMatcher = (m: unknown): boolean => isMapping(m) && m.anonymous === true && m.mtls === undefined && m.jwt === undefined;

const policySchema = v.pipe(
  mapping(
    {
      keysPublic: flag,
      allowAnonymousOnLoopback: flag,
      custodians: v.optional(
        v.array(
          v.pipe(
            matcherSchema,
            v.check((m) => !isAnonymousMatcher(m), "a custodian cannot be anonymous"),
          ),
          "must be a list",
        ),
        [],
      ),
      rateLimits: v.optional(mapping({ perIdentity: v.optional(rateLimitSchema), perKey: v.optional(rateLimitSchema) }), {}),
      // Required (an empty list is fine): a truncated or half-written file then fails instead of
      // silently denying everything.
      rules: v.array(ruleSchema, "must be a list"),
    },
    { rules: "required (a list; an empty list denies every call)" },
    "policy: must be a mapping",
  ),
  v.rawCheck(({ dataset, addIssue }) => {
    const doc = dataset.value;
    if (!isMapping(doc) || !Array.isArray(doc.rules)) return;
    const rules = doc.rules as unknown[];
    const seen = new Set<string>();
    rules.forEach((rule, i) => {
      if (!isMapping(rule)) return;
      const match = Array.isArray(rule.match) ? (rule.match as unknown[]) : [rule.match];
      if (doc.allowAnonymousOnLoopback !== true && match.some(isAnonymousMatcher)) {
        addIssue({ message: "anonymous callers need allowAnonymousOnLoopback: true", path: [at(doc, "rules"), at(rules, i), at(rule, "match")] });
      }
      const name = rule.name;
      if (typeof name !== "string" || name === "") return;
      if (seen.has(name)) addIssue({ message: `the name "${name}" is used more than once`, path: [at(doc, "rules")] });
      seen.add(name);
    });
  }),
);

type MatcherDoc =
  | { mtls: string | Partial<Record<MtlsIdentitySource, string>> }
  | { jwt: { issuer: string; claims?: Record<string, string | number | boolean | (string | number | boolean)[]> } }
  | { anonymous: true };
type RateLimitDoc = { ratePerSecond: number; burst: number };
interface RuleDoc {
  name: string;
  match: MatcherDoc | MatcherDoc[];
  keys: string[];
  methods?: SignerMethod[];
  allowOldVersions: boolean;
  rateLimit?: RateLimitDoc;
}
/** The document as the schema has checked it. */
interface PolicyDoc {
  keysPublic: boolean;
  allowAnonymousOnLoopback: boolean;
  custodians: MatcherDoc[];
  rateLimits: { perIdentity?: RateLimitDoc; perKey?: RateLimitDoc };
  rules: RuleDoc[];
}

function matcherOf(m: MatcherDoc): Matcher {
  if ("anonymous" in m) return { kind: "anonymous" };
  if ("jwt" in m)
    return {
      kind: "jwt",
      issuer: new Glob(m.jwt.issuer),
      claims: Object.entries(m.jwt.claims ?? {}).map(([name, x]) => ({ name, patterns: (Array.isArray(x) ? x : [x]).map((p) => new Glob(String(p))) })),
    };
  if (typeof m.mtls === "string") return { kind: "mtls", source: "uri", id: new Glob(m.mtls) };
  const mtls = m.mtls;
  const source = MTLS_SOURCES.find((k) => mtls[k] !== undefined) as MtlsIdentitySource;
  return { kind: "mtls", source, id: new Glob(mtls[source] as string, source === "dns") };
}

/** The checked document as the Policy evaluates it (globs compiled), deep-frozen. */
function policyDataOf(doc: PolicyDoc): PolicyData {
  const spec = (r: RateLimitDoc | undefined): RateLimitSpec | undefined => (r ? { ratePerSecond: r.ratePerSecond, burst: r.burst } : undefined);
  return deepFreeze({
    keysPublic: doc.keysPublic,
    allowAnonymousOnLoopback: doc.allowAnonymousOnLoopback,
    custodians: doc.custodians.map(matcherOf),
    perIdentity: spec(doc.rateLimits.perIdentity),
    perKey: spec(doc.rateLimits.perKey),
    rules: doc.rules.map((r) => ({
      name: r.name,
      match: (Array.isArray(r.match) ? r.match : [r.match]).map(matcherOf),
      keys: r.keys.map((k) => new Glob(k)),
      methods: new Set(r.methods ?? SIGNER_METHODS),
      allowOldVersions: r.allowOldVersions,
      rateLimit: spec(r.rateLimit),
    })),
  });
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
  /** Parts that are valid but can never take effect (logged as warnings when the policy is loaded). */
  readonly notes: readonly string[];
  private readonly data: PolicyData;
  private readonly rulesByName: ReadonlyMap<string, Rule>;

  private constructor(data: PolicyData) {
    this.data = data;
    this.keysPublic = data.keysPublic;
    this.allowAnonymousOnLoopback = data.allowAnonymousOnLoopback;
    this.ruleNames = Object.freeze(data.rules.map((r) => r.name));
    this.rulesByName = new Map(data.rules.map((r) => [r.name, r]));
    // KeyAdmin identifies custodians by client certificate only: a jwt entry is accepted (the
    // document stays valid, as published examples have one) but matches no one.
    this.notes = Object.freeze(
      data.custodians.flatMap((m, i) => (m.kind === "jwt" ? [`custodians[${i}] names a jwt issuer: KeyAdmin accepts client certificates only, so this entry never matches`] : [])),
    );
  }

  /** Parses YAML or JSON (JSON is YAML); throws PolicyInvalidError (CONFIG_INVALID) listing every problem. */
  static parse(text: string, source: string): Policy {
    // Each problem says where (line, column), never what the line holds.
    const yaml = parseYamlText(text);
    if (!yaml.ok) throw new PolicyInvalidError(source, yaml.problems);
    const root = yaml.value;
    // An empty file is more likely a half-written one than a wish to deny everything.
    if (root === undefined || root === null) throw new PolicyInvalidError(source, ["the policy is empty (write `rules: []` to deny every call)"]);
    const r = validate(policySchema, root, { rules: "name" });
    if (!r.ok) throw new PolicyInvalidError(source, r.problems);
    // The schema checked this shape; its one-of-several parts (v.lazy) do not carry their types.
    return new Policy(policyDataOf(r.value as unknown as PolicyDoc));
  }

  static async load(file: string): Promise<Policy> {
    return Policy.parse(readPolicyText(file), file);
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

/**
 * The policy file's text: a regular file of at most 1 MiB (readRegularFile), as `config check`
 * requires, so that a FIFO or a device never hangs a start or a reload.
 */
function readPolicyText(file: string): string {
  const r = readRegularFile(file);
  if (Buffer.isBuffer(r)) return r.toString("utf8");
  throw new PolicyInvalidError(file, [r.kind === "unreadable" ? `cannot read the file (${r.code})` : regularFileProblem(file, r)]);
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
  /** SIGHUP and file events; reloads run one at a time, in order. */
  private readonly trigger: ReloadTrigger;

  private constructor(
    readonly file: string,
    private readonly logger: Logger,
    policy: Policy,
    text: string,
  ) {
    this.policy = policy;
    this.lastText = text;
    this.trigger = new ReloadTrigger([file], {
      reload: (force) => this.load(!force),
      onError: (e) => this.logger.error("policy reload failed", { file: this.file, error: e }),
      onWatchError: (_dir, e) => this.logger.warn("policy file watch failed; reload with SIGHUP", { file: this.file, error: e }),
      debounceMs: POLICY_RELOAD_DEBOUNCE_MS,
    });
  }

  /** Loads the policy; an invalid policy at start-up throws CONFIG_INVALID (there is nothing to keep). */
  static async open(file: string, logger: Logger): Promise<PolicyStore> {
    const path = resolve(file);
    const text = readPolicyText(path);
    const store = new PolicyStore(path, logger, Policy.parse(text, path), text);
    logger.info("policy loaded", { file: path, rules: store.policy.ruleNames.length });
    for (const note of store.policy.notes) logger.warn(`policy ${path}: ${note}`, { file: path });
    return store;
  }

  get current(): Policy {
    return this.policy;
  }

  /** Re-reads the file now. true: the new policy is in force; false: rejected (logged), the old one stays. */
  reload(): Promise<boolean> {
    return this.trigger.run(() => this.load(false));
  }

  /** Reloads on SIGHUP and when the file changes, debounced. Watches the directory because editors and Kubernetes replace files. */
  watch(): void {
    this.trigger.start();
  }

  close(): void {
    this.trigger.close();
  }

  private async load(onlyIfChanged: boolean): Promise<boolean> {
    try {
      const text = readPolicyText(this.file);
      if (onlyIfChanged && text === this.lastText) return true;
      this.lastText = text;
      const next = Policy.parse(text, this.file);
      this.policy = next;
      this.logger.info("policy reloaded", { file: this.file, rules: next.ruleNames.length });
      for (const note of next.notes) this.logger.warn(`policy ${this.file}: ${note}`, { file: this.file });
      return true;
    } catch (e) {
      if (!(e instanceof PolicyInvalidError)) throw e;
      this.logger.error(`policy ${this.file} rejected, the previous policy stays in force: ${e.problems.join("; ")}`, { file: this.file, problems: e.problems });
      return false;
    }
  }
}
