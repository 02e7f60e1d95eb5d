/**
 * Real certificates made by the openssl CLI (tooling independent of src/), for chain-rule tests
 * and e2e tests. Every certificate is issued with `openssl ca`, because OpenSSL 3.0's
 * `openssl x509` cannot set an arbitrary notBefore (no -not_before before 3.4), and expired or
 * not-yet-valid certificates need one.
 *
 *   const root = OpensslCa.root(dir, { subject: "/C=US/ST=WA/O=Acme/CN=Root" });
 *   const inter = root.intermediate({ subject: "/C=US/ST=WA/O=Acme/CN=Inter" });
 *   const leaf = inter.leaf({ subject: "/C=US/ST=WA/O=Acme/CN=release" });   // { der, keyPem }
 *   const hsmLeaf = inter.signPublicKey(spkiDer, { subject: "/C=US/ST=WA/O=Acme/CN=hsm" });
 *   const chain = [leaf.der, inter.certDer, root.certDer];
 *   inter.revoke(leaf.der); const crlPem = inter.crl();                       // a CRL listing it
 */
import { execFileSync } from "node:child_process";
import { randomBytes, X509Certificate } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export type KeyType = "ec-256" | "ec-384" | "rsa-2048" | "rsa-1024";

export interface CertOptions {
  /** openssl -subj form, e.g. "/C=US/ST=WA/O=Acme/CN=x"; "+" joins a multi-valued RDN. */
  subject: string;
  /** Key of the new certificate (ignored by signCsr and signPublicKey). Default ec-256. */
  key: KeyType;
  /** Digest the issuer signs with. Default sha256. */
  md: "sha256" | "sha384" | "sha1";
  /** openssl v3 extension section body, one extension per line. */
  extensions: string;
  /** Validity length from notBefore when notAfter is not given. Default 30. */
  days: number;
  /** Default: 5 minutes ago, which absorbs a verifier's clock skew (protocol §5.3). */
  notBefore: Date;
  notAfter: Date;
}

export const CODE_SIGNING_LEAF_EXT = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning";
export const CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign";
/** A TLS server certificate for the tests' loopback listeners. */
export const SERVER_LEAF_EXT = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1";
/** A TLS client certificate; add a subjectAltName line to name the caller. */
export const CLIENT_LEAF_EXT = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth";

const KEY_ARGS: Record<KeyType, string[]> = {
  "ec-256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
  "ec-384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
  "rsa-2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
  "rsa-1024": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
};

const SKEW_MS = 5 * 60_000;
const DAY_MS = 24 * 3600_000;

function openssl(args: string[]): void {
  execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
}

/** ASN.1 time for `openssl ca -startdate/-enddate`: UTCTime before 2050, GeneralizedTime after. */
function asn1Time(d: Date): string {
  const iso = d.toISOString().replace(/[-:T]/g, "").slice(0, 14);
  return `${d.getUTCFullYear() < 2050 ? iso.slice(2) : iso}Z`;
}

function caConfig(dir: string): string {
  return [
    "[ca]",
    "default_ca = this_ca",
    "[this_ca]",
    `database = ${join(dir, "index.txt")}`,
    `new_certs_dir = ${dir}`,
    `serial = ${join(dir, "serial")}`,
    "policy = policy_any",
    "unique_subject = no",
    "email_in_dn = yes",
    "[policy_any]",
    "commonName = optional",
    "",
  ].join("\n");
}

/** A CA (root or intermediate) with its key and `openssl ca` database in its own directory. */
export class OpensslCa {
  readonly certDer: Buffer;
  readonly certPem: string;
  readonly certFile: string;
  private readonly keyFile: string;
  private issued = 0;

  private constructor(private readonly dir: string) {
    this.certFile = join(dir, "ca.pem");
    this.keyFile = join(dir, "ca.key");
    this.certPem = readFileSync(this.certFile, "utf8");
    this.certDer = Buffer.from(new X509Certificate(this.certPem).raw);
  }

  /** A self-signed CA in a new subdirectory of `dir`. Default extensions: CA_EXT. */
  static root(dir: string, o: Partial<CertOptions> = {}): OpensslCa {
    const caDir = OpensslCa.prepare(dir);
    const keyFile = join(caDir, "ca.key");
    newKey(keyFile, o.key);
    const csr = join(caDir, "ca.csr");
    openssl(["req", "-new", "-key", keyFile, "-subj", "/CN=placeholder", "-out", csr]);
    issue(caDir, { csr, out: join(caDir, "ca.pem"), signKey: keyFile, selfSign: true }, { extensions: CA_EXT, ...o });
    return new OpensslCa(caDir);
  }

  /** A CA issued by this one, in a sibling directory. Default extensions: CA_EXT. */
  intermediate(o: Partial<CertOptions> = {}): OpensslCa {
    const caDir = OpensslCa.prepare(join(this.dir, ".."));
    const keyFile = join(caDir, "ca.key");
    newKey(keyFile, o.key);
    this.sign(this.csrFor(keyFile), join(caDir, "ca.pem"), { extensions: CA_EXT, ...o });
    return new OpensslCa(caDir);
  }

  /** A DER certificate for the key of a PEM CSR (e.g. one the HSM made), with the CSR's subject unless o.subject is given. Default extensions: CODE_SIGNING_LEAF_EXT. */
  signCsr(csrPem: string, o: Partial<CertOptions> = {}): Buffer {
    const csr = this.file("csr");
    writeFileSync(csr, csrPem);
    return this.signToDer(csr, o, true);
  }

  /**
   * A DER certificate for a public key without its private key (e.g. an HSM key), made by
   * `openssl x509 -new -force_pubkey`. OpenSSL 3.0 sets its notBefore to now: `openssl ca`, the
   * only 3.0 tool with explicit dates, insists on a CSR signed by the key, and `openssl x509`
   * re-signs only self-signed inputs. So notBefore/notAfter are refused here; use `days`.
   * Default extensions: CODE_SIGNING_LEAF_EXT.
   */
  signPublicKey(spkiDer: Buffer, o: Partial<Omit<CertOptions, "notBefore" | "notAfter">> = {}): Buffer {
    if ("notBefore" in o || "notAfter" in o) throw new Error("signPublicKey cannot set notBefore/notAfter with OpenSSL 3.0; use signCsr");
    const pub = this.file("pub.der");
    writeFileSync(pub, spkiDer);
    const extFile = this.file("ext");
    writeFileSync(extFile, `[ext]\n${o.extensions ?? CODE_SIGNING_LEAF_EXT}\n`);
    const out = this.file("der");
    openssl([
      "x509",
      "-new",
      "-force_pubkey",
      pub,
      "-keyform",
      "DER",
      "-subj",
      o.subject ?? "/CN=unnamed",
      "-CA",
      this.certFile,
      "-CAkey",
      this.keyFile,
      "-extfile",
      extFile,
      "-extensions",
      "ext",
      "-days",
      String(o.days ?? 30),
      "-set_serial",
      `0x${positiveSerial()}`,
      `-${o.md ?? "sha256"}`,
      "-outform",
      "DER",
      "-out",
      out,
    ]);
    return readFileSync(out);
  }

  /** A leaf with a fresh software key. Default extensions: CODE_SIGNING_LEAF_EXT. */
  leaf(o: Partial<CertOptions> = {}): { der: Buffer; keyPem: string } {
    const keyFile = this.file("key");
    newKey(keyFile, o.key);
    return { der: this.signToDer(this.csrFor(keyFile), o), keyPem: readFileSync(keyFile, "utf8") };
  }

  /** Revokes a certificate this CA issued (DER), for the CRLs made from now on. */
  revoke(der: Buffer): void {
    const pem = this.file("revoke.pem");
    writeFileSync(pem, new X509Certificate(der).toString());
    openssl(["ca", "-batch", "-config", join(this.dir, "ca.cnf"), "-keyfile", this.keyFile, "-cert", this.certFile, "-md", "sha256", "-revoke", pem]);
  }

  /** A PEM CRL of the certificates revoked so far, lastUpdate 5 minutes ago, nextUpdate in 7 days unless given (a past one: a stale CRL). */
  crl(o: { nextUpdate?: Date } = {}): string {
    const out = this.file("crl.pem");
    const last = new Date(Date.now() - SKEW_MS);
    const next = o.nextUpdate ?? new Date(Date.now() + 7 * DAY_MS);
    openssl([
      "ca",
      "-gencrl",
      "-batch",
      "-config",
      join(this.dir, "ca.cnf"),
      "-keyfile",
      this.keyFile,
      "-cert",
      this.certFile,
      "-md",
      "sha256",
      "-crl_lastupdate",
      asn1Time(last),
      "-crl_nextupdate",
      asn1Time(next),
      "-out",
      out,
    ]);
    return readFileSync(out, "utf8");
  }

  private static prepare(parent: string): string {
    mkdirSync(parent, { recursive: true });
    const dir = join(parent, `ca-${randomBytes(4).toString("hex")}`);
    mkdirSync(dir);
    writeFileSync(join(dir, "index.txt"), "");
    writeFileSync(join(dir, "ca.cnf"), caConfig(dir));
    return dir;
  }

  private file(ext: string): string {
    return join(this.dir, `issued-${++this.issued}.${ext}`);
  }

  /** A CSR for `keyFile`; its subject is replaced at issuance. */
  private csrFor(keyFile: string): string {
    const csr = this.file("csr");
    openssl(["req", "-new", "-key", keyFile, "-subj", "/CN=placeholder", "-out", csr]);
    return csr;
  }

  private signToDer(csr: string, o: Partial<CertOptions>, keepCsrSubject = false): Buffer {
    const pem = this.file("pem");
    this.sign(csr, pem, { extensions: CODE_SIGNING_LEAF_EXT, ...o }, keepCsrSubject);
    return Buffer.from(new X509Certificate(readFileSync(pem)).raw);
  }

  private sign(csr: string, out: string, o: Partial<CertOptions>, keepCsrSubject = false): void {
    issue(this.dir, { csr, out, signKey: this.keyFile, caCert: this.certFile, keepCsrSubject }, o);
  }
}

function newKey(file: string, key: KeyType = "ec-256"): void {
  openssl(["genpkey", ...KEY_ARGS[key], "-out", file]);
}

/** 16 random bytes with the top bit clear: a positive serial of correct DER length. */
function positiveSerial(): string {
  const b = randomBytes(16);
  b[0] = ((b[0] as number) & 0x7f) | 0x01;
  return b.toString("hex");
}

interface IssueFiles {
  csr: string;
  out: string;
  signKey: string;
  caCert?: string;
  selfSign?: boolean;
  keepCsrSubject?: boolean;
}

/** One `openssl ca` issuance with explicit dates, subject, digest and extensions. */
function issue(caDir: string, f: IssueFiles, o: Partial<CertOptions>): void {
  const notBefore = o.notBefore ?? new Date(Date.now() - SKEW_MS);
  const notAfter = o.notAfter ?? new Date(notBefore.getTime() + (o.days ?? 30) * DAY_MS);
  const extFile = `${f.out}.ext`;
  writeFileSync(extFile, `[ext]\n${o.extensions ?? ""}\n`);
  // A fresh random serial per issuance, rather than openssl's sequential ones.
  writeFileSync(join(caDir, "serial"), `${positiveSerial()}\n`);
  // Without a subject the CSR's own is kept (a CSR made by the HSM names its key's subject).
  const subject = o.subject ?? (f.keepCsrSubject ? undefined : "/CN=unnamed");
  const args = [
    "ca",
    "-batch",
    "-notext",
    "-config",
    join(caDir, "ca.cnf"),
    "-in",
    f.csr,
    "-out",
    f.out,
    "-keyfile",
    f.signKey,
    ...(subject ? ["-subj", subject] : []),
    "-preserveDN",
    "-md",
    o.md ?? "sha256",
    "-extfile",
    extFile,
    "-extensions",
    "ext",
    "-startdate",
    asn1Time(notBefore),
    "-enddate",
    asn1Time(notAfter),
  ];
  args.push(...(f.selfSign ? ["-selfsign"] : ["-cert", f.caCert ?? ""]));
  openssl(args);
}
