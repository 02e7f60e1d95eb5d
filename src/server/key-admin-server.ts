import { X509Certificate } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { SignerError } from "../errors/index.js";
import { KeyAdminDefinition, type InventoryKey, type KeyVersionInfo, type SlotInfo } from "../gen/hsm_signer/v1/key_admin.js";
import type { CustodyKey, CustodyVersion, KeyCustodian, KeyInventory, SlotDetails } from "../signing/custody.js";
import { isKeySpec, type KeySpec } from "../signing/key-spec.js";
import { validateKeyId } from "../signing/signing-service.js";
import type { AccessControl } from "./access-control.js";
import {
  auditKeyId,
  auditText,
  quotedValue,
  bindServer,
  EarlyAnswers,
  methodNames,
  newGrpcServer,
  serviceDefinition,
  unaryHandler,
  type AuditSink,
  type CallContext,
  type MethodOptions,
  type RunningServer,
  type ServiceHandlers,
} from "./grpc-common.js";
import type { Logger } from "../log/index.js";
import type { AuditEvent } from "../signing/ports.js";
import type { ListenerLimits, TlsContextMaterial, TlsHandshakeFailure } from "./tls-listener.js";
import { goSubjectString, sha256Hex } from "../signing/certificates.js";

export interface KeyAdminServerOptions {
  /** host:port; port 0 picks a free port. */
  listen: string;
  /** mTLS only: every caller presents a certificate issued by clientCa. */
  tls: TlsContextMaterial & ListenerLimits & { clientCa: Buffer; onHandshakeFailure?: (f: TlsHandshakeFailure) => void };
  /** The custody port (hsm/'s KeyCustody in the service). */
  custody: KeyCustodian;
  /** The keys with all their versions (hsm/'s Pkcs11KeyStore in the service). */
  keys: KeyInventory;
  access: AccessControl;
  audit: AuditSink;
  logger: Logger;
  maxDeadlineMs?: number;
  onRequest?: (method: string, result: string, seconds: number, keyId: string | undefined) => void;
}

export const DEFAULT_EXPIRY_WARNING_DAYS = 30;
const MAX_REASON_LENGTH = 256;
const MAX_SUBJECT_LENGTH = 1024;
const DAY_MS = 86_400_000;

function keySpec(v: string, field: string, optional = false): KeySpec | undefined {
  if (!v && optional) return undefined;
  if (!isKeySpec(v)) throw new SignerError("INVALID_ARGUMENT", `${field} ${quotedValue(v)} is not one of RSA-2048, RSA-3072, RSA-4096, EC-256, EC-384, EC-521`);
  return v;
}

/**
 * What a custodian should act on. A CA key is refused for signing (its record says so), but a
 * CA whose chain ends at a self-signed root on the token is as it should be, not a problem.
 */
function problemOf(v: CustodyVersion): string {
  const reason = v.record.unusableReason ?? "";
  const c = v.record.certificate;
  if (!c?.isCa || v.state === "destroyed" || reason !== `key "${v.record.keyId}" is a CA key; CA keys do not sign artifacts`) return reason;
  const top = v.record.chain[v.record.chain.length - 1];
  return top && selfSigned(top) ? "" : `the certificate chain of CA key "${v.record.keyId}" does not reach a self-signed root on the token`;
}

function selfSigned(der: Buffer): boolean {
  try {
    const c = new X509Certificate(der);
    return c.subject === c.issuer && c.verify(c.publicKey);
  } catch {
    return false;
  }
}

function versionInfo(v: CustodyVersion, warnDays: number, at: number): KeyVersionInfo {
  const c = v.record.certificate;
  const days = c ? Math.floor((c.notAfter.getTime() - at) / DAY_MS) : 0;
  return {
    version: v.record.version,
    state: v.state,
    keySpec: v.record.spec,
    current: v.record.current,
    objectId: v.idHex,
    certificateSubject: c?.subject ?? "",
    certificateIssuer: c?.issuer ?? "",
    notBefore: c?.notBefore.toISOString() ?? "",
    notAfter: c?.notAfter.toISOString() ?? "",
    daysUntilExpiry: days,
    expiringSoon: c !== undefined && c.notAfter.getTime() > at && days < warnDays,
    expired: c !== undefined && c.notAfter.getTime() <= at,
    chainLength: v.record.chain.length,
    problem: problemOf(v),
    hasSigned: v.hasSigned,
    created: v.created ?? "",
    role: c ? (c.isCa ? "ca" : "signing") : "",
    disabledReason: v.disabled?.reason ?? "",
  };
}

export function inventoryKey(view: CustodyKey, warnDays = DEFAULT_EXPIRY_WARNING_DAYS, at = Date.now()): InventoryKey {
  return {
    keyId: view.keyId,
    state: view.state?.disabled ? "disabled" : "enabled",
    currentVersion: view.current?.record.version ?? 0,
    versions: view.versions.map((v) => versionInfo(v, warnDays, at)),
    disabledReason: view.state?.disabled?.reason ?? "",
  };
}

/** Longest string of a request that an intent line copies (a subject, a reason, a label). */
const INTENT_STRING_MAX = 300;

/**
 * The line a token-changing KeyAdmin call writes before it changes anything (result STARTED):
 * who asked for what, with the request's scalar fields (strings cut at INTENT_STRING_MAX; lists,
 * such as a chain's certificates, by their length). The call's own line follows with its result,
 * under the same request id; a STARTED line without one means the process ended in between.
 */
export function intentEvent(record: AuditEvent, req: object): AuditEvent {
  const request: Record<string, string | number | boolean> = {};
  for (const [k, v] of Object.entries(req)) {
    if (typeof v === "string") request[k] = auditText(v, INTENT_STRING_MAX);
    else if (typeof v === "number" || typeof v === "boolean") request[k] = v;
    else if (Array.isArray(v)) request[k] = v.length;
  }
  return { ...record, result: "STARTED", latencyMs: 0, admin: { request } };
}

/** A slot as the wire has it: slot_id is a uint64, the custody port's decimal string. */
function slotInfo(s: SlotDetails): SlotInfo {
  return { ...s, slotId: Number(s.slotId) };
}

/**
 * hsm_signer.v1.KeyAdmin on its own mTLS listener. Only callers whose client certificate names a
 * custodian of the policy get in; every call, allowed or not, is audited like a signing request.
 */
export async function startKeyAdminServer(o: KeyAdminServerOptions): Promise<RunningServer> {
  const unary = unaryHandler({ logger: o.logger, access: o.access, audit: o.audit, listen: o.listen, maxDeadlineMs: o.maxDeadlineMs, onRequest: o.onRequest, allowAnonymous: false });
  const definition = serviceDefinition(KeyAdminDefinition);
  const server = newGrpcServer({ "grpc.max_receive_message_length": 4 * 1024 * 1024 }, new EarlyAnswers(unary, new Map(methodNames(definition, "KeyAdmin."))));
  const admin = <Req, Res extends object>(method: string, fn: (req: Req, ctx: CallContext) => Promise<Res>, m?: MethodOptions): grpc.handleUnaryCall<Req, Res> =>
    unary<Req, Res>(
      `KeyAdmin.${method}`,
      async (req, ctx) => {
        const keyId = (req as { keyId?: unknown }).keyId;
        if (typeof keyId === "string" && keyId) ctx.record.keyId = auditKeyId(keyId);
        const version = (req as { keyVersion?: unknown }).keyVersion;
        if (typeof version === "number" && version) ctx.record.keyVersion = version;
        o.access.authorizeCustodian(ctx, method);
        // A change to the token is audited before it starts: if the audit cannot take this line
        // (disk full, database gone), the call fails here and the token is left as it was.
        if (m?.mutates) await o.audit.append(intentEvent(ctx.record, req as object));
        return fn(req, ctx);
      },
      m,
    );
  const mutates: MethodOptions = { mutates: true };

  const handlers: ServiceHandlers<typeof KeyAdminDefinition> = {
    ListSlots: admin("ListSlots", () => Promise.resolve({ slots: o.custody.listSlots().map(slotInfo) })),
    GenerateKey: admin(
      "GenerateKey",
      async (req, ctx) => {
        const view = await o.custody.generateKey(validateKeyId(req.keyId), keySpec(req.keySpec, "key_spec") as KeySpec, req.tokenLabel || undefined);
        ctx.record.keyVersion = 1;
        ctx.record.admin = { keySpec: req.keySpec };
        return { key: inventoryKey(view), keyVersion: 1 };
      },
      mutates,
    ),
    RotateKey: admin(
      "RotateKey",
      async (req, ctx) => {
        const r = await o.custody.rotateKey(validateKeyId(req.keyId), keySpec(req.keySpec, "key_spec", true));
        ctx.record.keyVersion = r.version;
        return { key: inventoryKey(r.view), keyVersion: r.version };
      },
      mutates,
    ),
    CreateCsr: admin("CreateCsr", async (req, ctx) => {
      if (!req.subject) throw new SignerError("INVALID_ARGUMENT", 'subject is required, e.g. "CN=release, O=Example, ST=WA, C=US"');
      if (req.subject.length > MAX_SUBJECT_LENGTH) throw new SignerError("INVALID_ARGUMENT", `subject is longer than ${MAX_SUBJECT_LENGTH} characters`);
      const r = await o.custody.createCsr(validateKeyId(req.keyId), req.keyVersion, req.subject);
      ctx.record.keyVersion = r.version;
      ctx.record.admin = { subject: req.subject };
      return { csrPem: r.pem, keyVersion: r.version };
    }),
    ImportCertificateChain: admin(
      "ImportCertificateChain",
      async (req, ctx) => {
        if (req.certificates.length === 0) throw new SignerError("INVALID_ARGUMENT", "certificates is empty: give the chain as PEM or DER");
        const r = await o.custody.importChain(validateKeyId(req.keyId), req.keyVersion, req.certificates, req.strictOrder);
        ctx.record.keyVersion = r.version;
        ctx.record.admin = { chainSha256: r.chain.map((c) => sha256Hex(c)), stored: r.stored };
        return { keyId: req.keyId, keyVersion: r.version, certificateChain: r.chain, stored: r.stored };
      },
      mutates,
    ),
    CreateTestChain: admin(
      "CreateTestChain",
      async (req, ctx) => {
        const days = req.validityDays || undefined;
        if (days !== undefined && days > 3650) throw new SignerError("INVALID_ARGUMENT", "validity_days must be at most 3650");
        const r = await o.custody.createTestChain({
          keyId: validateKeyId(req.keyId),
          keySpec: keySpec(req.keySpec, "key_spec") as KeySpec,
          rootKeyId: req.rootKeyId ? validateKeyId(req.rootKeyId) : undefined,
          rootKeySpec: keySpec(req.rootKeySpec, "root_key_spec", true),
          organization: req.organization || undefined,
          state: req.state || undefined,
          country: req.country || undefined,
          validityDays: days,
        });
        const key = await o.keys.getKey(req.keyId);
        ctx.record.keyVersion = key.version;
        const created = Object.entries(r.created)
          .filter(([, v]) => v)
          .map(([k]) => k);
        ctx.record.admin = { created };
        return { certificateChain: r.chain, created, keyVersion: key.version };
      },
      mutates,
    ),
    SetKeyState: admin(
      "SetKeyState",
      async (req, ctx) => {
        if (req.reason.length > MAX_REASON_LENGTH || /[\x00-\x1f\x7f]/.test(req.reason)) {
          throw new SignerError("INVALID_ARGUMENT", `reason must be at most ${MAX_REASON_LENGTH} characters on one line (it is shown to refused callers and kept on the token)`);
        }
        const view = await o.custody.setState(validateKeyId(req.keyId), req.keyVersion, req.enabled, req.reason);
        ctx.record.admin = { enabled: req.enabled, reason: req.reason };
        return { key: inventoryKey(view), keyVersion: req.keyVersion };
      },
      mutates,
    ),
    DestroyKeyVersion: admin(
      "DestroyKeyVersion",
      async (req, ctx) => {
        if (!req.keyVersion) throw new SignerError("INVALID_ARGUMENT", "key_version is required: versions are destroyed one at a time");
        const r = await o.custody.destroyVersion(validateKeyId(req.keyId), req.keyVersion, {
          confirm: req.confirm,
          destroyCertificate: req.destroyCertificate,
          acknowledgeSigned: req.acknowledgeSigned,
        });
        ctx.record.admin = { destroyed: r.destroyed, acknowledgeSigned: req.acknowledgeSigned };
        return { key: inventoryKey(r.view), destroyed: r.destroyed };
      },
      mutates,
    ),
    GetInventory: admin("GetInventory", async (req) => {
      if (req.keyId) await o.keys.refreshIfChanged();
      const views = req.keyId ? [await o.keys.view(validateKeyId(req.keyId))] : o.keys.inventory();
      const warn = req.expiryWarningDays || DEFAULT_EXPIRY_WARNING_DAYS;
      return { keys: views.map((v) => inventoryKey(v, warn)) };
    }),
    GetCertificateChain: admin("GetCertificateChain", async (req, ctx) => {
      const key = await o.keys.getKey(validateKeyId(req.keyId), req.keyVersion || undefined);
      if (key.chain.length === 0) throw new SignerError("KEY_UNUSABLE", key.unusableReason ?? `key "${req.keyId}" has no certificate`);
      ctx.record.keyVersion = key.version;
      return { keyId: key.keyId, keyVersion: key.version, certificateChain: key.chain, leafSubject: goSubjectString(key.chain[0] as Buffer) };
    }),
  };
  server.addService(definition, handlers);
  return bindServer(server, o.listen, { insecure: false, ...o.tls, requireClientCertificate: true }, unary.inFlight);
}
