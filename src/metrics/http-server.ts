/**
 * The operations listener (plain HTTP, separate from the gRPC port): Prometheus metrics, liveness
 * and readiness. It serves only what is computed here and never echoes a request, so nothing
 * secret can leave through it.
 *
 *   GET /metrics  Prometheus text format
 *   GET /healthz  200 "ok" while the process runs (liveness)
 *   GET /readyz   200 when ready, else 503; both with JSON {"ready", "checks"}
 *
 * HEAD is accepted wherever GET is; other methods get 405, other paths 404.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { SignerMetrics } from "./metrics.js";

export interface Readiness {
  ready: boolean;
  /** Named checks, e.g. { hsm: true, audit: false }; each failing one makes the service unready. */
  checks: Record<string, boolean>;
}

export interface OpsServerOptions {
  /** host:port (IPv6 as [::1]:port); port 0 picks a free port. */
  listen: string;
  metrics: SignerMetrics;
  ready: () => Readiness;
}

export interface RunningOpsServer {
  port: number;
  close(): Promise<void>;
}

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`metrics listen address "${listen}" is not host:port`);
  return { host: (m[1] ?? m[2]) as string, port };
}

function send(req: IncomingMessage, res: ServerResponse, status: number, contentType: string, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, {
    "Content-Type": contentType,
    "Content-Length": Buffer.byteLength(body),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    ...headers,
  });
  res.end(req.method === "HEAD" ? undefined : body);
}

const TEXT = "text/plain; charset=utf-8";
const JSON_TYPE = "application/json";

function readiness(ready: () => Readiness): Readiness {
  try {
    const r = ready();
    // Unready when the callback says so or when any named check fails.
    const checks: Record<string, boolean> = {};
    for (const [name, ok] of Object.entries(r.checks)) checks[name] = ok === true;
    return { ready: r.ready === true && Object.values(checks).every(Boolean), checks };
  } catch {
    return { ready: false, checks: { readiness_callback: false } };
  }
}

async function handle(o: OpsServerOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? "/").split("?", 1)[0];
  const known = path === "/metrics" || path === "/healthz" || path === "/readyz";
  if (!known) return send(req, res, 404, TEXT, "not found\n");
  if (req.method !== "GET" && req.method !== "HEAD") return send(req, res, 405, TEXT, "method not allowed\n", { Allow: "GET, HEAD" });

  if (path === "/healthz") return send(req, res, 200, TEXT, "ok\n");
  if (path === "/readyz") {
    const r = readiness(o.ready);
    return send(req, res, r.ready ? 200 : 503, JSON_TYPE, `${JSON.stringify(r)}\n`);
  }
  let text: string;
  try {
    text = await o.metrics.metricsText();
  } catch {
    return send(req, res, 500, TEXT, "metrics collection failed\n");
  }
  send(req, res, 200, o.metrics.contentType, text);
}

/** Starts the operations HTTP listener; resolves once it listens. */
export async function startOpsServer(o: OpsServerOptions): Promise<RunningOpsServer> {
  const { host, port } = parseListen(o.listen);
  const server = createServer((req, res) => {
    handle(o, req, res).catch(() => {
      if (!res.headersSent) send(req, res, 500, TEXT, "internal error\n");
      else res.destroy();
    });
  });
  // Scrapers and probes send small requests: keep slow or idle clients from holding sockets.
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;
  server.maxHeadersCount = 50;

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host, port }, () => {
      server.off("error", reject);
      resolve();
    });
  });

  let closing: Promise<void> | undefined;
  return {
    port: (server.address() as AddressInfo).port,
    close(): Promise<void> {
      closing ??= new Promise<void>((resolve, reject) => {
        server.close((e) => (e ? reject(e) : resolve()));
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
