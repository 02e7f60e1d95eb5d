import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import * as grpc from "@grpc/grpc-js";
import { identityKind, type CallerIdentity } from "../auth/index.js";
import { ERROR_CODE_TRAILER, SignerError, toSignerError } from "../errors/index.js";
import type { Logger } from "../log/index.js";
import type { AuditEvent, AuditFacts, AuditReceipt, AuditSink } from "../signing/ports.js";
import type { AccessControl } from "./access-control.js";
import { isLoopbackAddress } from "./bind-server.js";
import { auditText } from "../signing/signing-service.js";
import { takeCall, type CallStatus, type EarlyAnswerSink, type EarlyCall } from "./early-answers.js";
import { InFlight } from "./in-flight.js";
import { malformedReason as malformed } from "./service-definitions.js";
import { grpcStatusOf } from "./status.js";

/** Longest a request may take when the caller sets no deadline (or a longer one). */
export const DEFAULT_MAX_DEADLINE_MS = 60_000;

/** Request ids: a random per-process prefix and a counter; unique across replicas without a syscall per request. */
const REQUEST_ID_PREFIX = randomBytes(4).toString("hex");
let requestCounter = 0;
const round = (ms: number): number => Math.round(ms * 1000) / 1000;

export interface CallContext {
  requestId: string;
  deadline: number;
  caller: CallerIdentity;
  /** The audit facts of this call: the signing core fills them, the handler passes them on. */
  facts: AuditFacts;
  /** KeyAdmin's handlers add what they learn here (until KeyAdmin moves beside the Signer, issue 12 §2). */
  record: AuditEvent;
}

/**
 * The one audit event of a call: what the edge knows (request, caller, result) with the facts the
 * core learned written into it, in place: the same fields in the same order as a copy would have
 * ({...record, ...facts}), without a new object of a dozen fields per answer (the largest
 * allocation of a call's own; an audit store serializes the event during append, and the
 * database store takes its columns then too, so a later change to the record is not seen).
 */
function auditEvent(record: AuditEvent, facts: AuditFacts): AuditEvent {
  const fields: Record<string, unknown> = record;
  for (const k of Object.keys(facts) as (keyof AuditFacts)[]) {
    if (k !== "decision") fields[k] = facts[k];
    else if (facts.decision) record.decision = facts.decision;
  }
  return record;
}

function newRequestId(): string {
  requestCounter = (requestCounter + 1) % 0x100000000;
  return REQUEST_ID_PREFIX + requestCounter.toString(16).padStart(8, "0");
}

export interface UnaryOptions {
  logger: Logger;
  access: AccessControl;
  audit: AuditSink;
  /** host:port of the listener (anonymous callers are possible only on loopback). */
  listen: string;
  maxDeadlineMs?: number;
  /** Called once per answered call, for metrics. */
  onRequest?: (method: string, result: string, seconds: number, keyId: string | undefined) => void;
  /** Whether the policy may let anonymous loopback callers in on this listener (default true; never for KeyAdmin). */
  allowAnonymous?: boolean;
}

export interface MethodOptions {
  /**
   * The method changes the token (KeyAdmin's generate, rotate, import, state and destroy calls).
   * Such a call is never cut short at its deadline or by a cancellation: the change may already
   * be on the token, so it runs to its end and the audit records what really happened.
   */
  mutates?: boolean;
}

export type UnaryHandler = (<Req, Res extends object>(method: string, fn: (req: Req, ctx: CallContext) => Promise<Res>, m?: MethodOptions) => grpc.handleUnaryCall<Req, Res>) &
  EarlyAnswerSink & {
    /** The calls whose handlers are still running; bindServer's close() waits for them. */
    readonly inFlight: InFlight;
  };

/** Answers this long before the caller's deadline, so that the audited DEADLINE_EXCEEDED leaves before grpc-js's own. */
const DEADLINE_MARGIN_MS = 25;

/**
 * The longest error message an answer (and the log) carries. grpc-js sends it percent-encoded in
 * the grpc-message trailer, and a trailer block over the client's header list limit (64 KiB in
 * grpc-js and Go) is never delivered: the caller waited for its deadline and its connection
 * stopped answering. Every message is written to be far shorter; this holds whatever a caller's
 * input makes of one (up to 9 encoded bytes a character: 36 KiB).
 */
export const MAX_ERROR_MESSAGE_CHARS = 4096;

/**
 * The one wrapper every RPC goes through: request id, deadline, caller identity, the audit record
 * (written, and fsynced, before any answer leaves), error mapping (once, here), logging.
 *
 * Each call gets exactly one audit line and one answer. grpc-js ends a call by itself at its
 * deadline or when the client cancels; so a call that does not change the token is answered
 * DEADLINE_EXCEEDED, audited, a moment before its deadline, and a cancelled one is audited as
 * CANCELLED (or DEADLINE_EXCEEDED) at once. Whatever its handler produces afterwards (a
 * signature) never leaves. A call that changes the token runs to its end instead (MethodOptions).
 */
export function unaryHandler(o: UnaryOptions): UnaryHandler {
  const maxDeadline = o.maxDeadlineMs ?? DEFAULT_MAX_DEADLINE_MS;
  const loopbackListener = o.allowAnonymous !== false && isLoopbackAddress(o.listen);
  const inFlight = new InFlight();
  /**
   * A failed call's end: its audit line (the result is the error's code), then the status to send,
   * with the request id and the catalog code; AUDIT_UNAVAILABLE instead when the line cannot be written.
   */
  const failure = async (err: unknown, record: AuditEvent, facts: AuditFacts, started: number): Promise<grpc.StatusObject> => {
    const { requestId, method } = record;
    let e = toSignerError(err);
    if (e.message.length > MAX_ERROR_MESSAGE_CHARS) e = new SignerError(e.code, auditText(e.message, MAX_ERROR_MESSAGE_CHARS), { cause: e.cause, retryAfterMs: e.retryAfterMs });
    record.result = e.code;
    record.latencyMs = round(performance.now() - started);
    try {
      await o.audit.append(auditEvent(record, facts));
    } catch (auditError) {
      e = toSignerError(auditError);
    }
    const code = grpcStatusOf(e.code);
    o.onRequest?.(method, e.code, (performance.now() - started) / 1000, facts.keyId ?? record.keyId);
    if (e.code === "INTERNAL" || e.code === "AUDIT_UNAVAILABLE") o.logger.error("request failed", { requestId, method, code: e.code, error: e.cause ?? e });
    else o.logger.info("request refused", { requestId, method, code: e.code, message: e.message, identity: record.identity });
    const md = new grpc.Metadata();
    md.set("request-id", requestId);
    // The catalog code itself, so that clients need not guess it back from the gRPC status
    // (HSM_PIN_INCORRECT and HSM_UNAVAILABLE are both UNAVAILABLE; only one is worth a retry).
    md.set(ERROR_CODE_TRAILER, e.code);
    if (e.retryAfterMs !== undefined) md.set("retry-after-ms", String(e.retryAfterMs));
    return { code, details: `${e.message}${e.message.includes("\n") ? "\n" : " "}[request ${requestId}]`, metadata: md };
  };
  const deadlineOf = (call: grpc.ServerUnaryCall<unknown, unknown>): number => {
    const d = call.getDeadline();
    const t = d instanceof Date ? d.getTime() : d;
    return Math.min(Number.isFinite(t) ? t : Infinity, Date.now() + maxDeadline);
  };
  const handler =
    <Req, Res extends object>(method: string, fn: (req: Req, ctx: CallContext) => Promise<Res>, m: MethodOptions = {}): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) => {
      // grpc-js refused the call already (early-answers.ts), and that answer has the call's line.
      if (!takeCall(call.metadata)) return;
      // Every call appends exactly one line (below): a write may wait a moment for it (group commit).
      o.audit.expect?.();
      const requestId = newRequestId();
      const started = performance.now();
      const deadline = deadlineOf(call as grpc.ServerUnaryCall<unknown, unknown>);
      const record: AuditEvent = { requestId, peer: call.getPeer(), identity: "-", method, decision: "none", result: "", latencyMs: 0 };
      const facts: AuditFacts = {};
      let answered = false;
      let timer: NodeJS.Timeout | undefined;
      /** The first of: the handler's answer, its failure, the deadline, a cancellation. */
      const claim = (): boolean => {
        if (answered) return false;
        answered = true;
        if (timer) clearTimeout(timer);
        return true;
      };
      const answerError = async (err: unknown): Promise<void> => {
        callback(await failure(err, record, facts, started));
      };
      const answerErrorSafely = (err: unknown): Promise<void> => answerError(err).catch((e: unknown) => o.logger.error("request failed while failing", { requestId, error: e }));
      const run = async (): Promise<void> => {
        const bad = malformed(call.request);
        const caller = await o.access.authenticate(call as grpc.ServerUnaryCall<unknown, unknown>, loopbackListener);
        record.identity = caller.id;
        record.identityKind = identityKind(caller);
        if (bad) throw new SignerError("INVALID_ARGUMENT", bad);
        const res = await fn(call.request, { requestId, deadline, caller, facts, record });
        if (!m.mutates && Date.now() > deadline) throw new SignerError("DEADLINE_EXCEEDED", "the deadline passed before the answer was ready");
        if (!claim()) return; // answered already (deadline, cancellation): this answer never leaves
        record.result = "OK";
        record.latencyMs = round(performance.now() - started);
        let receipt: AuditReceipt;
        try {
          receipt = await o.audit.append(auditEvent(record, facts));
        } catch (e) {
          return answerErrorSafely(e);
        }
        if ("signature" in res) Object.assign(res, { receipt });
        if (o.logger.enabled("debug")) o.logger.debug("request", { requestId, method, result: "OK", ms: performance.now() - started });
        o.onRequest?.(method, "OK", (performance.now() - started) / 1000, facts.keyId ?? record.keyId);
        callback(null, res);
      };
      if (!m.mutates) {
        timer = setTimeout(
          () => {
            if (claim()) void answerErrorSafely(new SignerError("DEADLINE_EXCEEDED", "the deadline passed before the answer was ready"));
          },
          Math.max(0, deadline - Date.now() - DEADLINE_MARGIN_MS),
        );
        call.on("cancelled", () => {
          if (!claim()) return;
          // grpc-js has already ended the call (the client cancelled, or its deadline passed): only the audit line is left to write.
          record.result = Date.now() >= deadline - DEADLINE_MARGIN_MS ? "DEADLINE_EXCEEDED" : "CANCELLED";
          record.latencyMs = round(performance.now() - started);
          o.onRequest?.(method, record.result, (performance.now() - started) / 1000, facts.keyId ?? record.keyId);
          o.audit.append(auditEvent(record, facts)).catch((e: unknown) => o.logger.error("the audit line of a cancelled call could not be written", { requestId, method, error: e }));
        });
      }
      inFlight.enter();
      run()
        .catch((e: unknown) => {
          if (claim()) return answerErrorSafely(e);
          // Answered already (deadline, cancellation); a failure other than running late is still worth a line.
          if (toSignerError(e).code !== "DEADLINE_EXCEEDED") o.logger.warn("request failed after it was answered", { requestId, method, error: e });
          return undefined;
        })
        .finally(() => inFlight.leave());
    };
  /** A call grpc-js refused before any method ran (early-answers.ts): audited like any refusal, the caller named when it can be. */
  const answerEarly = async (call: EarlyCall, method: string, e: SignerError): Promise<CallStatus> => {
    const started = performance.now();
    o.audit.expect?.();
    const record: AuditEvent = { requestId: newRequestId(), peer: call.getPeer(), identity: "-", method, decision: "none", result: "", latencyMs: 0 };
    try {
      const caller = await o.access.authenticate(call, loopbackListener);
      record.identity = caller.id;
      record.identityKind = identityKind(caller);
    } catch {
      // No identity (or a bad one): the line says "-", and the answer stays the refusal itself.
    }
    return failure(e, record, {}, started);
  };
  /** A path no service of this listener serves: a call like any other, audited, UNIMPLEMENTED. */
  const unknownMethod = (path: string): grpc.handleUnaryCall<Buffer, Buffer> =>
    handler<Buffer, Buffer>(path, async () => {
      throw new SignerError("UNIMPLEMENTED", `no method ${path} on this listener`);
    });
  return Object.assign(handler, { inFlight, answerEarly, unknownMethod });
}
