import assert from "node:assert/strict";
import { KeyObject, generateKeyPairSync, randomBytes, type webcrypto } from "node:crypto";
import { closeSync, constants as fsConstants, mkdtempSync, openSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect, createServer as createTlsServer, type PeerCertificate, type TLSSocket } from "node:tls";
import { SignJWT, base64url, exportJWK, generateKeyPair, type CryptoKey, type JWK, type JWTPayload } from "jose";
import { Authenticator, type AuthenticatorOptions, type CallerIdentity, type JwtIssuerOptions } from "../../src/auth/identity.js";
import { PolicyStore } from "../../src/auth/policy.js";
import { SignerError } from "../../src/errors/index.js";
import { createLogger } from "../../src/log/index.js";
import { createTlsMaterial, type TlsMaterial } from "../helpers/tls.js";

const FILE_ISSUER = "https://issuer.file.test";
const URL_ISSUER = "https://issuer.url.test";
const AUDIENCE = "hsm-signer";

interface SigningKey {
  kid: string;
  alg: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  jwk: JWK;
}

async function signingKey(alg: "RS256" | "ES256", kid: string): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { kid, alg, privateKey, publicKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: "sig" } };
}

const now = (): number => Math.floor(Date.now() / 1000);

/** A token for `iss`, signed by `key`; `claims` and `header` override the defaults. */
async function token(key: SigningKey, iss: string, claims: JWTPayload = {}, header: Record<string, unknown> = {}): Promise<string> {
  return new SignJWT({ sub: "repo:corp/app:ref:refs/tags/v1", repository: "corp/app", ref: "refs/tags/v1", ...claims })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: "JWT", ...header })
    .setIssuer(iss)
    .setAudience(typeof claims.aud === "string" ? claims.aud : AUDIENCE)
    .setIssuedAt()
    .setExpirationTime(typeof claims.exp === "number" ? claims.exp : now() + 300)
    .sign(key.privateKey);
}

/** Asserts UNAUTHENTICATED with a message matching `why` that does not contain the token. */
async function rejects(auth: Authenticator, jwt: string, why: RegExp, peerCertificate?: PeerCertificate): Promise<void> {
  let caught: unknown;
  try {
    await auth.authenticate({ authorization: `Bearer ${jwt}`, peerCertificate });
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof SignerError, `expected a SignerError, got ${String(caught)}`);
  assert.equal(caught.code, "UNAUTHENTICATED", caught.message);
  assert.match(caught.message, why);
  assert.ok(!caught.message.includes(jwt), "the message must not contain the token");
  for (const part of jwt.split(".")) if (part.length > 8) assert.ok(!caught.message.includes(part), "the message must not contain any part of the token");
}

/** A FIFO with no writer: reading it blocks until someone writes, so a reader that does not check what a file is hangs. */
function fifo(path: string): string {
  execFileSync("mkfifo", [path]);
  return path;
}

/** Lets a reader blocked on a FIFO go (a test that failed must not leave a thread of libuv's pool behind). */
function releaseFifo(path: string): void {
  try {
    closeSync(openSync(path, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK));
  } catch {
    // no reader waiting
  }
}

/** `p`, or a failure when it has not settled within 3 s (a hang). */
async function settles<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} hung`)), 3000)));
  try {
    return await Promise.race([p, hung]);
  } finally {
    clearTimeout(timer);
  }
}

async function configInvalid(o: AuthenticatorOptions, ...mentions: RegExp[]): Promise<void> {
  await assert.rejects(Authenticator.create(o), (e: unknown) => {
    assert.ok(e instanceof SignerError && e.code === "CONFIG_INVALID", String(e));
    for (const m of mentions) assert.match(e.message, m);
    return true;
  });
}

/** Serves whatever `jwks.body` holds at /jwks over HTTPS with the dev server certificate. */
class JwksServer {
  hits = 0;
  body = "";
  private server: HttpsServer | undefined;

  constructor(private readonly tls: TlsMaterial) {}

  async start(): Promise<string> {
    this.server = createHttpsServer({ cert: this.tls.serverCert, key: this.tls.serverKey }, (req, res) => {
      this.hits++;
      if (req.url !== "/jwks") {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "content-type": "application/json" }).end(this.body);
    });
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    return `https://127.0.0.1:${(this.server.address() as AddressInfo).port}/jwks`;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("caller identity (Authenticator) with real JWTs, JWKS file and HTTPS JWKS", function () {
  this.timeout(20_000);
  let dir: string;
  let tls: TlsMaterial;
  let rsa: SigningKey;
  let ec: SigningKey;
  let urlKey: SigningKey;
  let jwksFile: string;
  let server: JwksServer;
  let jwksUrl: string;
  let auth: Authenticator;

  const fileIssuer = (): JwtIssuerOptions => ({ issuer: FILE_ISSUER, audience: AUDIENCE, jwksFile, algorithms: ["RS256", "ES256"] });
  const urlIssuer = (): JwtIssuerOptions => ({ issuer: URL_ISSUER, audience: AUDIENCE, jwksUrl, jwksCaFile: tls.caFile, algorithms: ["ES256"] });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-auth-"));
    tls = createTlsMaterial(join(dir, "tls"), "build-runner");
    [rsa, ec, urlKey] = await Promise.all([signingKey("RS256", "rsa-1"), signingKey("ES256", "ec-1"), signingKey("ES256", "url-1")]);
    jwksFile = join(dir, "jwks.json");
    writeFileSync(jwksFile, JSON.stringify({ keys: [rsa.jwk, ec.jwk] }));
    server = new JwksServer(tls);
    server.body = JSON.stringify({ keys: [urlKey.jwk] });
    jwksUrl = await server.start();
    auth = await Authenticator.create({ jwt: [fileIssuer(), urlIssuer()] });
  });

  after(async () => {
    auth?.close();
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  describe("bearer tokens", () => {
    it("a valid RS256 or ES256 token gives a jwt identity with its claims", async () => {
      for (const key of [rsa, ec]) {
        const id = await auth.authenticate({ authorization: `Bearer ${await token(key, FILE_ISSUER, { workflow: "release" })}` });
        assert.ok(id);
        assert.equal(id.kind, "jwt");
        assert.equal(id.id, `${FILE_ISSUER}#repo:corp/app:ref:refs/tags/v1`);
        assert.equal(id.subject, "repo:corp/app:ref:refs/tags/v1");
        assert.equal(id.issuer, FILE_ISSUER);
        assert.equal(id.claims?.repository, "corp/app");
        assert.equal(id.claims?.ref, "refs/tags/v1");
        assert.equal(id.claims?.workflow, "release");
        assert.equal(id.claims?.aud, AUDIENCE);
      }
    });

    it("accepts the scheme in any case and a token within the clock skew", async () => {
      const id = await auth.authenticate({ authorization: `bearer ${await token(ec, FILE_ISSUER, { exp: now() - 10 })}` });
      assert.equal(id?.kind, "jwt");
    });

    it("refuses an expired token", async () => {
      await rejects(auth, await token(rsa, FILE_ISSUER, { exp: now() - 120 }), /expired/);
    });

    it("refuses a token that is not yet valid", async () => {
      await rejects(auth, await token(rsa, FILE_ISSUER, { nbf: now() + 120 }), /not yet valid/);
    });

    it("refuses a token issued in the future (iat beyond the clock skew); one within the skew is accepted", async () => {
      const issuedAt = async (iat: number): Promise<string> =>
        new SignJWT({ sub: "repo:corp/app" })
          .setProtectedHeader({ alg: "ES256", kid: ec.kid })
          .setIssuer(FILE_ISSUER)
          .setAudience(AUDIENCE)
          .setIssuedAt(iat)
          .setExpirationTime(iat + 300)
          .sign(ec.privateKey);
      await rejects(auth, await issuedAt(now() + 3600), /issued in the future/);
      assert.equal((await auth.authenticate({ authorization: `Bearer ${await issuedAt(now() + 10)}` }))?.kind, "jwt");
    });

    it("refuses a token whose crit header names an extension nobody processes, saying so", async () => {
      // The issuer's signer knows the extension (jose's crit option); the service does not.
      const jwt = await new SignJWT({ sub: "repo:corp/app" })
        .setProtectedHeader({ "alg": rsa.alg, "kid": rsa.kid, "crit": ["x-unknown"], "x-unknown": true })
        .setIssuer(FILE_ISSUER)
        .setAudience(AUDIENCE)
        .setIssuedAt()
        .setExpirationTime(now() + 300)
        .sign(rsa.privateKey, { crit: { "x-unknown": true } });
      await rejects(auth, jwt, /the token's "crit" header names an extension this service does not process \("x-unknown"\)/);
    });

    it("refuses a token from an issuer that is not configured", async () => {
      await rejects(auth, await token(rsa, "https://evil.example"), /issuer "https:\/\/evil\.example" is not trusted/);
    });

    it("refuses a token of a trusted issuer signed with another trusted issuer's key", async () => {
      // The URL issuer's key is unknown to the file issuer: the iss claim alone never selects keys.
      await rejects(auth, await token(urlKey, FILE_ISSUER), /no key of issuer "https:\/\/issuer\.file\.test" matches/);
    });

    it("refuses a token for another audience", async () => {
      await rejects(auth, await token(rsa, FILE_ISSUER, { aud: "someone-else" }), /audience is not "hsm-signer"/);
    });

    it("refuses a bad signature", async () => {
      const forger = await signingKey("RS256", "rsa-1"); // same kid, different key
      await rejects(auth, await token(forger, FILE_ISSUER), /signature does not verify/);
      // A valid token whose payload was changed afterwards.
      const [h, , s] = (await token(rsa, FILE_ISSUER)).split(".");
      const payload = base64url.encode(JSON.stringify({ iss: FILE_ISSUER, aud: AUDIENCE, sub: "admin", exp: now() + 300 }));
      await rejects(auth, `${h}.${payload}.${s}`, /signature does not verify/);
    });

    it("refuses an unknown kid", async () => {
      const stranger = await signingKey("RS256", "nobody");
      await rejects(auth, await token(stranger, FILE_ISSUER), /no key of issuer .* matches the token \(kid "nobody"/);
    });

    it('refuses alg "none" (an unsigned token crafted by hand)', async () => {
      const enc = (o: object): string => base64url.encode(JSON.stringify(o));
      const unsigned = `${enc({ alg: "none", typ: "JWT" })}.${enc({ iss: FILE_ISSUER, aud: AUDIENCE, sub: "admin", exp: now() + 300 })}.`;
      await rejects(auth, unsigned, /algorithm "none" is not allowed/);
    });

    it("refuses HMAC confusion: HS256 keyed with the RSA public key's PEM", async () => {
      const pem = KeyObject.from(rsa.publicKey as webcrypto.CryptoKey).export({ type: "spki", format: "pem" });
      const forged = await new SignJWT({ sub: "admin" })
        .setProtectedHeader({ alg: "HS256", kid: rsa.kid })
        .setIssuer(FILE_ISSUER)
        .setAudience(AUDIENCE)
        .setExpirationTime(now() + 300)
        .sign(new TextEncoder().encode(String(pem)));
      await rejects(auth, forged, /algorithm "HS256" is not allowed/);
    });

    it("refuses an algorithm outside the issuer's allow-list", async () => {
      const rsaForUrl = await signingKey("RS256", "url-rsa");
      await rejects(auth, await token(rsaForUrl, URL_ISSUER), /algorithm "RS256" is not allowed for issuer "https:\/\/issuer\.url\.test" \(allowed: ES256\)/);
    });

    it("refuses tokens without exp or sub, malformed tokens and other schemes", async () => {
      const noExp = await new SignJWT({ sub: "x" }).setProtectedHeader({ alg: "ES256", kid: ec.kid }).setIssuer(FILE_ISSUER).setAudience(AUDIENCE).sign(ec.privateKey);
      await rejects(auth, noExp, /no "exp" claim/);
      const noSub = await new SignJWT({})
        .setProtectedHeader({ alg: "ES256", kid: ec.kid })
        .setIssuer(FILE_ISSUER)
        .setAudience(AUDIENCE)
        .setExpirationTime(now() + 60)
        .sign(ec.privateKey);
      await rejects(auth, noSub, /no "sub" claim/);
      await rejects(auth, "not-a-jwt", /malformed/);
      await rejects(auth, `${base64url.encode("{}")}.${base64url.encode("[]")}.x`, /malformed/);
      for (const authorization of ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", ""]) {
        await assert.rejects(auth.authenticate({ authorization }), (e: unknown) => e instanceof SignerError && e.code === "UNAUTHENTICATED" && /not a bearer token/.test(e.message));
      }
    });

    it("an invalid token is refused even next to a valid client certificate", async () => {
      const cert = { subject: { CN: "ok" }, subjectaltname: "URI:spiffe://corp/build/a" } as unknown as PeerCertificate;
      await rejects(auth, await token(rsa, FILE_ISSUER, { exp: now() - 120 }), /expired/, cert);
      // A valid token wins over the certificate.
      const id = await auth.authenticate({ authorization: `Bearer ${await token(rsa, FILE_ISSUER)}`, peerCertificate: cert });
      assert.equal(id?.kind, "jwt");
    });

    it("refuses bearer tokens when no issuer is configured", async () => {
      const mtlsOnly = await Authenticator.create({});
      await assert.rejects(mtlsOnly.authenticate({ authorization: `Bearer ${await token(rsa, FILE_ISSUER)}` }), /no token issuer is configured/);
      mtlsOnly.close();
    });
  });

  describe("JWKS sources", () => {
    it("re-reads a JWKS file on reload(), keeping the old keys if the new file is bad", async () => {
      const file = join(dir, "rotating.json");
      writeFileSync(file, JSON.stringify({ keys: [rsa.jwk] }));
      const a = await Authenticator.create({ jwt: [{ ...fileIssuer(), jwksFile: file }] });
      try {
        const next = await signingKey("ES256", "ec-next");
        await rejects(a, await token(next, FILE_ISSUER), /no key/);
        writeFileSync(file, JSON.stringify({ keys: [rsa.jwk, next.jwk] }));
        await a.reload();
        assert.equal((await a.authenticate({ authorization: `Bearer ${await token(next, FILE_ISSUER)}` }))?.kind, "jwt");
        writeFileSync(file, "{ not json");
        await assert.rejects(a.reload(), (e: unknown) => e instanceof SignerError && e.code === "CONFIG_INVALID" && /not valid JSON/.test(e.message));
        assert.equal((await a.authenticate({ authorization: `Bearer ${await token(next, FILE_ISSUER)}` }))?.kind, "jwt");
      } finally {
        a.close();
      }
    });

    it("refuses a JWKS whose keys could verify no token (file or issuer, at start-up and on reload), keeping the keys in use", async () => {
      const weak = generateKeyPairSync("rsa", { modulusLength: 1024 });
      const strong = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const broken: [string, JWK[], RegExp][] = [
        ["an EC point that is not on the curve", [{ ...ec.jwk, x: "AAAA", y: "BBBB" }], /key 1 \(kid "ec-1"\) is not a public key Node can read/],
        ["an RSA key without its modulus", [{ kty: "RSA", e: "AQAB", kid: "no-n" }], /key 1 \(kid "no-n"\) is not a public key/],
        ["a 1024-bit RSA key", [{ ...weak.publicKey.export({ format: "jwk" }), kid: "weak" }], /kid "weak"\) is an RSA key of 1024 bits/],
        ["a private key", [rsa.jwk, { ...strong.privateKey.export({ format: "jwk" }), kid: "oops" }], /key 2 \(kid "oops"\) is a private key/],
        ["keys for encryption only", [{ ...rsa.jwk, use: "enc" }], /has no RSA, EC, OKP key for signatures/],
        ["a key without kty", [{ kid: "x" } as JWK], /key 1 \(kid "x"\) has no "kty"/],
      ];
      // A file: refused at start-up; on reload the old keys stay.
      const file = join(dir, "broken-keys.json");
      for (const [what, keys, why] of broken) {
        writeFileSync(file, JSON.stringify({ keys }));
        await configInvalid({ jwt: [{ ...fileIssuer(), jwksFile: file }] }, why);
        writeFileSync(file, JSON.stringify({ keys: [rsa.jwk] }));
        const a = await Authenticator.create({ jwt: [{ ...fileIssuer(), jwksFile: file }] });
        try {
          writeFileSync(file, JSON.stringify({ keys }));
          await assert.rejects(a.reload(), (e: unknown) => e instanceof SignerError && e.code === "CONFIG_INVALID" && why.test(e.message), what);
          assert.equal((await a.authenticate({ authorization: `Bearer ${await token(rsa, FILE_ISSUER)}` }))?.kind, "jwt", what);
        } finally {
          a.close();
        }
      }
      // An issuer: a refresh (periodic, SIGHUP, unknown kid) that gets such keys keeps those in use.
      const s = new JwksServer(tls);
      s.body = JSON.stringify({ keys: [urlKey.jwk] });
      const url = await s.start();
      const a = await Authenticator.create({ jwt: [{ ...urlIssuer(), jwksUrl: url }], jwksTiming: { unknownKidCooldownMs: 0 } });
      try {
        for (const [what, keys, why] of broken) {
          s.body = JSON.stringify({ keys });
          await assert.rejects(a.reload(), (e: unknown) => e instanceof SignerError && why.test(e.message), what);
          await rejects(a, await token(await signingKey("ES256", "made-up"), URL_ISSUER), /no key of issuer/);
          assert.equal((await a.authenticate({ authorization: `Bearer ${await token(urlKey, URL_ISSUER)}` }))?.kind, "jwt", what);
        }
        // An issuer's JWKS may also hold keys this does not verify with (oct, X25519): they are left alone.
        s.body = JSON.stringify({ keys: [{ kty: "oct", k: "c2VjcmV0", kid: "hmac" }, { kty: "OKP", crv: "X25519", x: "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo" }, urlKey.jwk] });
        await a.reload();
      } finally {
        a.close();
        await s.stop();
      }
    });

    it("verifies tokens from the HTTPS JWKS, and keeps doing so when the issuer is unreachable", async () => {
      const s = new JwksServer(tls);
      s.body = JSON.stringify({ keys: [urlKey.jwk] });
      const url = await s.start();
      const a = await Authenticator.create({ jwt: [{ ...urlIssuer(), jwksUrl: url }], jwksTiming: { refreshIntervalMs: 50, unknownKidCooldownMs: 0 } });
      try {
        const t = await token(urlKey, URL_ISSUER);
        assert.equal((await a.authenticate({ authorization: `Bearer ${t}` }))?.id, `${URL_ISSUER}#repo:corp/app:ref:refs/tags/v1`);
        await waitFor("a background refresh", () => s.hits >= 3);
        await s.stop();
        // Background refreshes and an unknown-kid refresh now fail; the cached keys still verify.
        await new Promise((r) => setTimeout(r, 150));
        assert.equal((await a.authenticate({ authorization: `Bearer ${t}` }))?.kind, "jwt");
        await rejects(a, await token(await signingKey("ES256", "rotated"), URL_ISSUER), /no key of issuer/);
        assert.equal((await a.authenticate({ authorization: `Bearer ${await token(urlKey, URL_ISSUER)}` }))?.kind, "jwt");
      } finally {
        a.close();
        await s.stop();
      }
    });

    it("fetches again on an unknown kid (key rotation), at most once per cooldown", async () => {
      const s = new JwksServer(tls);
      s.body = JSON.stringify({ keys: [urlKey.jwk] });
      const url = await s.start();
      const eager = await Authenticator.create({ jwt: [{ ...urlIssuer(), jwksUrl: url }], jwksTiming: { unknownKidCooldownMs: 0 } });
      const patient = await Authenticator.create({ jwt: [{ ...urlIssuer(), jwksUrl: url }] }); // default 30 s cooldown
      try {
        const rotated = await signingKey("ES256", "url-2");
        s.body = JSON.stringify({ keys: [urlKey.jwk, rotated.jwk] });
        const hits = s.hits;
        const t = await token(rotated, URL_ISSUER);
        // Concurrent tokens with the new kid share one fetch.
        const ids = await Promise.all([1, 2, 3].map(() => eager.authenticate({ authorization: `Bearer ${t}` })));
        assert.deepEqual(
          ids.map((i) => i?.kind),
          ["jwt", "jwt", "jwt"],
        );
        assert.equal(s.hits, hits + 1);
        // Within the cooldown since its start-up fetch: no fetch, the unknown kid is refused.
        await rejects(patient, t, /no key of issuer/);
        await rejects(patient, await token(await signingKey("ES256", "made-up"), URL_ISSUER), /no key of issuer/);
        assert.equal(s.hits, hits + 1);
      } finally {
        eager.close();
        patient.close();
        await s.stop();
      }
    });
  });

  describe("configuration", () => {
    it('refuses "none", HMAC and unknown algorithms, listing every problem', async () => {
      await configInvalid(
        {
          jwt: [
            { ...fileIssuer(), algorithms: ["none", "HS256", "RS256", "XYZ"] },
            { ...fileIssuer(), issuer: "https://b", algorithms: ["hs512"] },
          ],
        },
        /"none" is never allowed/,
        /HS256 is not allowed/,
        /hs512 is not allowed/,
        /"XYZ" is not one of/,
        /3 problem\(s\)|4 problem\(s\)/,
      );
    });

    it("refuses an http JWKS URL, both or neither key source, bad skews and bad mTLS sources", async () => {
      await configInvalid({ jwt: [{ issuer: "i", audience: "a", jwksUrl: "http://127.0.0.1/jwks", algorithms: ["RS256"] }] }, /must be https/);
      await configInvalid({ jwt: [{ issuer: "i", audience: "a", jwksUrl: "https://x/jwks", jwksFile, algorithms: ["RS256"] }] }, /exactly one of jwksFile and jwksUrl/);
      await configInvalid({ jwt: [{ issuer: "i", audience: "", algorithms: [] }] }, /audience: required/, /exactly one of/, /algorithms: required/);
      await configInvalid({ jwt: [{ ...fileIssuer(), clockSkewSeconds: -1 }, fileIssuer()] }, /clockSkewSeconds/, /configured twice/);
      await configInvalid({ mtlsIdentityFrom: ["uri", "email" as "uri"] }, /"email" is not uri, dns or cn/);
    });

    it("refuses unreadable or invalid JWKS and an unreachable JWKS URL at start-up", async () => {
      const empty = join(dir, "empty.json");
      writeFileSync(empty, JSON.stringify({ keys: [] }));
      await configInvalid(
        {
          jwt: [
            { ...fileIssuer(), jwksFile: join(dir, "missing.json") },
            { ...fileIssuer(), issuer: "https://e", jwksFile: empty },
          ],
        },
        /ENOENT/,
        /has no keys/,
      );
      // A FIFO or a file above 1 MiB: refused at once, as `config check` refuses them, never read.
      const pipe = fifo(join(dir, "jwks.fifo"));
      const large = join(dir, "large.json");
      writeFileSync(large, JSON.stringify({ keys: [rsa.jwk], pad: "x".repeat(1024 * 1024) }));
      try {
        await settles(
          configInvalid(
            {
              jwt: [
                { ...fileIssuer(), jwksFile: pipe },
                { ...fileIssuer(), issuer: "https://l", jwksFile: large },
              ],
            },
            /jwks\.fifo is not a regular file \(a FIFO\)/,
            /large\.json is larger than the limit of 1048576 bytes/,
          ),
          "reading a FIFO JWKS file",
        );
      } finally {
        releaseFifo(pipe);
      }
      const s = new JwksServer(tls);
      const url = await s.start();
      await s.stop();
      await configInvalid({ jwt: [{ ...urlIssuer(), jwksUrl: url }], jwksTiming: { fetchTimeoutMs: 1000 } }, /ECONNREFUSED/);
      // Without the extra CA the dev certificate is not trusted.
      const t = new JwksServer(tls);
      t.body = JSON.stringify({ keys: [urlKey.jwk] });
      const url2 = await t.start();
      try {
        await configInvalid({ jwt: [{ issuer: URL_ISSUER, audience: AUDIENCE, jwksUrl: url2, algorithms: ["ES256"] }] }, /certificate/);
        await configInvalid({ jwt: [{ ...urlIssuer(), jwksUrl: url2.replace("/jwks", "/nothing") }] }, /HTTP status 404/);
      } finally {
        await t.stop();
      }
    });
  });

  describe("mTLS identities", () => {
    const cert = (o: object): PeerCertificate => o as PeerCertificate;

    it("takes the URI SAN, then the DNS SAN, then the CN", async () => {
      const both = cert({ subject: { CN: "cn-name" }, subjectaltname: "DNS:a, URI:spiffe://x/y" });
      assert.deepEqual(await auth.authenticate({ peerCertificate: both }), { kind: "mtls", source: "uri", id: "spiffe://x/y", subject: "spiffe://x/y" });
      assert.deepEqual(await auth.authenticate({ peerCertificate: cert({ subject: { CN: "cn-name" }, subjectaltname: "IP Address:127.0.0.1, DNS:a" }) }), {
        kind: "mtls",
        source: "dns",
        id: "dns:a",
        subject: "a",
      });
      assert.deepEqual(await auth.authenticate({ peerCertificate: cert({ subject: { CN: "cn-name", O: "corp" } }) }), { kind: "mtls", source: "cn", id: "cn:cn-name", subject: "cn-name" });
      assert.equal((await auth.authenticate({ peerCertificate: cert({ subject: { CN: ["first", "second"] } }) }))?.id, "cn:first");
    });

    it("follows mtlsIdentityFrom", async () => {
      const a = await Authenticator.create({ mtlsIdentityFrom: ["dns", "cn"] });
      const c = cert({ subject: { CN: "cn-name" }, subjectaltname: "URI:spiffe://x/y, DNS:a" });
      assert.equal((await a.authenticate({ peerCertificate: c }))?.id, "dns:a");
      const cnOnly = await Authenticator.create({ mtlsIdentityFrom: ["cn"] });
      assert.equal((await cnOnly.authenticate({ peerCertificate: c }))?.id, "cn:cn-name");
      await assert.rejects(
        a.authenticate({ peerCertificate: cert({ subject: { O: "corp" }, subjectaltname: "URI:spiffe://x/y" }) }),
        (e: unknown) => e instanceof SignerError && e.code === "UNAUTHENTICATED" && /no DNS SAN, CN/.test(e.message),
      );
    });

    it("reads quoted SAN values as one value (a comma cannot forge a second entry)", async () => {
      const c = cert({ subject: {}, subjectaltname: 'URI:"spiffe://x/a, URI:spiffe://corp/admin", DNS:b' });
      assert.equal((await auth.authenticate({ peerCertificate: c }))?.id, "spiffe://x/a, URI:spiffe://corp/admin");
    });

    it("gives the identity of a real client certificate from a TLS handshake", async () => {
      const peer = await handshakePeerCertificate(tls);
      assert.deepEqual(await auth.authenticate({ peerCertificate: peer }), {
        kind: "mtls",
        source: "uri",
        id: "spiffe://hsm-signer.dev/build-runner",
        subject: "spiffe://hsm-signer.dev/build-runner",
      });
    });

    it("without credentials: undefined", async () => {
      assert.equal(await auth.authenticate({}), undefined);
      assert.equal(await auth.authenticate({ peerCertificate: cert({}) }), undefined, "Node's empty object for no certificate");
    });
  });
});

/** A real mutual TLS handshake on 127.0.0.1; returns what the server saw (getPeerCertificate). */
async function handshakePeerCertificate(tls: TlsMaterial): Promise<PeerCertificate> {
  let seen: PeerCertificate | undefined;
  const server = createTlsServer({ cert: tls.serverCert, key: tls.serverKey, ca: tls.ca, requestCert: true, rejectUnauthorized: true }, (s: TLSSocket) => {
    seen = s.getPeerCertificate();
    s.end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve, reject) => {
    const c = tlsConnect({ host: "127.0.0.1", port, ca: tls.ca, cert: tls.clientCert, key: tls.clientKey }, () => undefined);
    c.on("error", reject);
    c.on("close", () => resolve());
    c.resume();
  });
  await new Promise<void>((resolve) => server.close(() => resolve()));
  assert.ok(seen, "the server saw no client certificate");
  return seen;
}

describe("policy reload (PolicyStore)", function () {
  this.timeout(10_000);
  let dir: string;
  let file: string;
  let lines: string[];
  let store: PolicyStore | undefined;
  const caller: CallerIdentity = { kind: "mtls", source: "uri", id: "spiffe://corp/build/a", subject: "spiffe://corp/build/a" };
  const policyFor = (keys: string): string => `rules:\n  - name: build\n    match: { mtls: "spiffe://corp/build/*" }\n    keys: ["${keys}"]\n`;
  const allowed = (keyId: string): boolean => store?.current.decide(caller, "Sign", keyId).allow ?? false;
  const logger = () => createLogger("debug", (l) => lines.push(l));
  const errors = (): Record<string, unknown>[] => lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.level === "error");

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-policy-"));
    file = join(dir, "policy.yaml");
    writeFileSync(file, policyFor("build-*"));
    lines = [];
    store = await PolicyStore.open(file, logger());
  });

  afterEach(() => {
    store?.close();
    store = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it("refuses to open an invalid policy", async () => {
    writeFileSync(file, "rules: 3\n");
    await assert.rejects(PolicyStore.open(file, logger()), (e: unknown) => e instanceof SignerError && e.code === "CONFIG_INVALID" && /rules: must be a list/.test(e.message));
    await assert.rejects(PolicyStore.open(join(dir, "missing.yaml"), logger()), /ENOENT/);
  });

  it("refuses a policy file that is a FIFO or larger than 1 MiB at once, at start-up and on reload (the old policy stays)", async () => {
    const pipe = fifo(join(dir, "policy.fifo"));
    const large = join(dir, "large.yaml");
    writeFileSync(large, `${policyFor("*")}# ${"x".repeat(1024 * 1024)}\n`);
    try {
      await settles(
        assert.rejects(PolicyStore.open(pipe, logger()), (e: unknown) => e instanceof SignerError && e.code === "CONFIG_INVALID" && /is not a regular file \(a FIFO\)/.test(e.message)),
        "opening a FIFO policy",
      );
      await assert.rejects(PolicyStore.open(large, logger()), (e: unknown) => e instanceof SignerError && /larger than the limit of 1048576 bytes/.test(e.message));
      rmSync(file);
      execFileSync("mkfifo", [file]);
      assert.equal(await settles(store?.reload() ?? Promise.resolve(true), "reloading a FIFO policy"), false);
      assert.equal(allowed("build-1"), true, "the previous policy stays in force");
    } finally {
      releaseFifo(pipe);
      releaseFifo(file);
    }
  });

  it("applies a good change and rejects a bad one, keeping the old policy and logging every problem on one line", async () => {
    assert.equal(allowed("build-1"), true);
    writeFileSync(file, policyFor("release-*"));
    assert.equal(await store?.reload(), true);
    assert.equal(allowed("build-1"), false);
    assert.equal(allowed("release-1"), true);

    writeFileSync(file, `colour: blue\nrules:\n  - name: x\n    match: { mtls: "*" }\n    keys: "*"\n`);
    assert.equal(await store?.reload(), false);
    assert.equal(allowed("release-1"), true, "the previous policy stays in force");
    assert.equal(allowed("anything"), false);
    const [err, ...more] = errors();
    assert.equal(more.length, 0);
    assert.ok(err);
    assert.match(String(err.msg), /rejected, the previous policy stays in force: .*colour: unknown setting.*; .*keys: must be a list/);
    assert.ok(!String(err.msg).includes("\n"), "one line");
  });

  it("reloads on SIGHUP", async () => {
    writeFileSync(file, policyFor("release-*")); // before watch(): no file event
    store?.watch();
    assert.equal(allowed("release-1"), false);
    process.emit("SIGHUP", "SIGHUP");
    await waitFor("the SIGHUP reload", () => allowed("release-1"));
  });

  it("reloads when the file changes, in place or replaced by rename, and ignores a bad edit", async () => {
    store?.watch();
    writeFileSync(file, policyFor("release-*"));
    await waitFor("the in-place change", () => allowed("release-1"));
    const tmp = join(dir, `.policy.${randomBytes(4).toString("hex")}.tmp`);
    writeFileSync(tmp, policyFor("other-*"));
    renameSync(tmp, file);
    await waitFor("the replaced file", () => allowed("other-1"));
    writeFileSync(file, "rules: [");
    await waitFor("the rejection", () => errors().length > 0);
    assert.equal(allowed("other-1"), true);
    assert.equal(errors().length, 1, "one error line per bad edit");
  });

  it("stops reloading after close()", async () => {
    store?.watch();
    store?.close();
    writeFileSync(file, policyFor("release-*"));
    process.emit("SIGHUP", "SIGHUP");
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(allowed("release-1"), false);
  });
});
