import { randomBytes } from "node:crypto";
import { CertificateType, KeyGenMechanism, ObjectClass, type Session } from "graphene-pk11";
import { SignerError } from "../errors/index.js";
import { keySpecInfo, type KeySpec } from "../signing/key-spec.js";
import { parseCertificate } from "../signing/certificates.js";
import { EC_PARAMS } from "./mechanisms.js";
import { translatePkcs11Error } from "./pkcs11-errors.js";

export interface GeneratedKey {
  label: string;
  id: Buffer;
}

/** True when a private key with this CKA_LABEL exists on the token. */
export function privateKeyExists(session: Session, label: string): boolean {
  return session.find({ class: ObjectClass.PRIVATE_KEY, label }).length > 0;
}

/**
 * Generates a key pair on the token. The private key is CKA_SENSITIVE and not CKA_EXTRACTABLE,
 * so it can never leave the HSM; it may only sign. A label that already exists is refused unless
 * the caller makes a new version of that key (key-custody.ts).
 *
 * The HSM works on a libuv thread (C_GenerateKeyPair's callback form): RSA-4096 takes seconds,
 * and a service generating on its event loop answered no Sign, health probe or metrics scrape
 * meanwhile. pkcs11js copies the templates before it queues the call, so nothing here has to
 * stay referenced; the session stays checked out of the pool until the callback runs, so
 * neither a reconnection nor a shutdown finalizes the module under it.
 */
export async function generateKeyPair(session: Session, label: string, spec: KeySpec, o: { allowExistingLabel?: boolean } = {}): Promise<GeneratedKey> {
  if (!o.allowExistingLabel && privateKeyExists(session, label)) throw new SignerError("ALREADY_EXISTS", `a key labelled "${label}" already exists on the token`);
  const info = keySpecInfo(spec);
  const id = randomBytes(16);
  const common = { token: true, label, id };
  const privateTemplate = {
    ...common,
    class: ObjectClass.PRIVATE_KEY,
    private: true,
    sensitive: true,
    extractable: false,
    sign: true,
    decrypt: false,
    unwrap: false,
    derive: false,
    modifiable: false,
  };
  const [mechanism, publicTemplate] =
    info.kty === "RSA"
      ? [KeyGenMechanism.RSA, { ...common, class: ObjectClass.PUBLIC_KEY, private: false, verify: true, encrypt: false, wrap: false, modulusBits: info.bits, publicExponent: Buffer.from([1, 0, 1]) }]
      : [KeyGenMechanism.EC, { ...common, class: ObjectClass.PUBLIC_KEY, private: false, verify: true, paramsEC: EC_PARAMS[info.curve as "P-256"] }];
  try {
    await new Promise<void>((resolve, reject) => {
      session.generateKeyPair(mechanism, publicTemplate, privateTemplate, (err) => (err ? reject(err) : resolve()));
    });
  } catch (e) {
    throw translatePkcs11Error(e, `generating ${spec} key "${label}"`);
  }
  return { label, id };
}

/** The CKA_ID of the private key with this label. */
export function keyIdBytes(session: Session, label: string): Buffer {
  const found = session.find({ class: ObjectClass.PRIVATE_KEY, label });
  const first = found.length > 0 ? found.items(0) : undefined;
  if (!first) throw new SignerError("KEY_NOT_FOUND", `key "${label}" was not found on the token`);
  const { id } = first.getAttribute({ id: null }) as { id?: Buffer };
  if (!id || id.length === 0) throw new SignerError("KEY_UNUSABLE", `key "${label}" has no CKA_ID, so no certificate can be linked to it`);
  return id;
}

/** Stores an X.509 certificate as a token object linked to a key by CKA_ID. */
export function storeCertificate(session: Session, label: string, id: Buffer, der: Buffer): void {
  const cert = parseCertificate(der);
  try {
    session.create({
      class: ObjectClass.CERTIFICATE,
      certType: CertificateType.X_509,
      token: true,
      private: false,
      modifiable: false,
      label,
      id,
      subject: Buffer.from(cert.subjectName.toArrayBuffer()),
      issuer: Buffer.from(cert.issuerName.toArrayBuffer()),
      serial: derInteger(Buffer.from(cert.serialNumber, "hex")),
      value: der,
    });
  } catch (e) {
    throw translatePkcs11Error(e, `storing the certificate of "${label}"`);
  }
}

/** CKA_SERIAL_NUMBER is the DER encoding of the INTEGER. */
function derInteger(v: Buffer): Buffer {
  const body = v.length > 0 && (v[0] as number) & 0x80 ? Buffer.concat([Buffer.from([0]), v]) : v;
  return Buffer.concat([Buffer.from([0x02, body.length]), body]);
}
