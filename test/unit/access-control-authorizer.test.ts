import assert from "node:assert/strict";
import { Policy, RateLimiter, type Authenticator, type CallerIdentity, type PolicyStore } from "../../src/auth/index.js";
import { AccessControl } from "../../src/server/access-control.js";

const anonymous: CallerIdentity = { kind: "anonymous", id: "anonymous", subject: "anonymous" };

/** AccessControl as the signing core's Authorizer: the policy's decision and rule, and a refusal to throw. */
describe("AccessControl is the core's Authorizer", () => {
  const policy = Policy.parse(
    `allowAnonymousOnLoopback: true
rateLimits:
  perIdentity: { ratePerSecond: 0.001, burst: 1 }
rules:
  - name: local
    match: { anonymous: true }
    keys: ["release-*"]
    allowOldVersions: true
`,
    "test.yaml",
  );
  // authorize() never authenticates: the Authenticator is not used here.
  const access = (): AccessControl => new AccessControl({ authenticator: {} as Authenticator, policy: { current: policy } as PolicyStore, limiter: new RateLimiter() });

  it("allowed: the rule that allowed it and whether old versions may be used", () => {
    assert.deepEqual(access().authorize(anonymous, "Sign", "release-1"), { decision: "allow", rule: "local", allowOldVersions: true });
  });

  it("deny by default: a key no rule names is refused with PERMISSION_DENIED, no rule recorded", () => {
    const a = access().authorize(anonymous, "Sign", "other-1");
    assert.equal(a.decision, "deny");
    assert.equal(a.rule, undefined);
    assert.equal(a.allowOldVersions, false);
    assert.equal(a.refusal?.code, "PERMISSION_DENIED");
    assert.match(a.refusal?.message ?? "", /^anonymous may not call Sign with key "other-1": /);
  });

  it("over the rate limit: denied by the rule that allowed it, RATE_LIMITED with a retry hint", () => {
    const ac = access();
    assert.equal(ac.authorize(anonymous, "Sign", "release-1").decision, "allow");
    const a = ac.authorize(anonymous, "Sign", "release-1");
    assert.equal(a.decision, "deny");
    assert.equal(a.rule, "local");
    assert.equal(a.refusal?.code, "RATE_LIMITED");
    assert.ok((a.refusal?.retryAfterMs ?? 0) > 0);
  });

  it("mayUseKey: what ListKeys shows", () => {
    assert.equal(access().mayUseKey(anonymous, "release-9"), true);
    assert.equal(access().mayUseKey(anonymous, "other-1"), false);
  });
});
