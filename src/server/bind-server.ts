import * as grpc from "@grpc/grpc-js";
import { SignerError } from "../errors/index.js";
import type { EarlyAnswers } from "./early-answers.js";
import type { InFlight } from "./in-flight.js";
import { TlsListener, type ListenerLimits, type TlsContextMaterial, type TlsHandshakeFailure } from "./tls-listener.js";

export type TlsOptions =
  | (TlsContextMaterial &
      ListenerLimits & {
        insecure: false;
        /** true: every client must present a certificate from clientCa (mTLS only); false: a certificate is optional (bearer tokens too). */
        requireClientCertificate?: boolean;
        /** Each connection refused during its TLS handshake (TlsHandshakeFailureLog.report counts and logs them). */
        onHandshakeFailure?: (f: TlsHandshakeFailure) => void;
      })
  | { insecure: true };

export interface RunningServer {
  port: number;
  server: grpc.Server;
  /** Stops accepting, waits for in-flight calls up to graceMs, then cancels the rest. */
  close(graceMs?: number): Promise<void>;
  /** New certificate, key, client CAs and CRLs for the connections that arrive from now on (TlsListener.setMaterial); a plaintext listener throws. */
  setTlsMaterial(m: TlsContextMaterial): void;
}

/**
 * A grpc-js server as every listener of the service builds it. channelz (grpc-js's call and
 * socket counters for its debugging service, which this service does not serve) is off: its
 * per-call bookkeeping was about 4% of the event loop's CPU per Sign call. With `early`, the
 * answers grpc-js would give by itself before any method runs are audited (early-answers.ts).
 */
export function newGrpcServer(options: grpc.ServerOptions = {}, early?: EarlyAnswers): grpc.Server {
  const server = new grpc.Server({ ...options, "grpc.enable_channelz": 0, ...(early ? { interceptors: [early.interceptor] } : {}) });
  early?.install(server);
  return server;
}

export function isLoopbackAddress(listen: string): boolean {
  const host = listen.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** How long close() waits, after the grace period, for handlers still running (a key generation takes seconds). */
const HANDLER_DRAIN_MS = 30_000;

/**
 * Binds a server to host:port with the given TLS; close() stops accepting, waits up to graceMs,
 * then cancels the rest, and then waits (bounded) for the handlers of cancelled calls to finish,
 * so that their audit lines are written before the caller closes the audit.
 */
export async function bindServer(server: grpc.Server, listen: string, tls: TlsOptions, inFlight?: InFlight): Promise<RunningServer> {
  let port: number;
  let listener: TlsListener | undefined;
  if (tls.insecure) {
    port = await new Promise<number>((res, rej) => {
      server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? rej(new SignerError("CONFIG_INVALID", `cannot listen on ${listen}: ${err.message}`, { cause: err })) : res(p),
      );
    });
  } else {
    listener = await TlsListener.open(server, listen, { ...tls, requireClientCertificate: tls.requireClientCertificate !== false });
    port = listener.port;
  }
  return {
    port,
    server,
    setTlsMaterial(m) {
      if (!listener) throw new SignerError("CONFIG_INVALID", `the listener on ${listen} is plaintext (tls.insecure): it has no TLS material to replace`);
      listener.setMaterial(m);
    },
    async close(graceMs = 10_000) {
      listener?.stopAccepting();
      await new Promise<void>((res) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          res();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          res();
        });
      });
      // Connections still in their TLS handshake never reached grpc-js: they end here.
      listener?.destroy();
      if (inFlight) await inFlight.idle(HANDLER_DRAIN_MS);
    },
  };
}
