import * as grpc from "@grpc/grpc-js";
import { HealthImplementation, type ServingStatus } from "grpc-health-check";
import { bindServer, newGrpcServer, type RunningServer } from "./bind-server.js";

/** The names a health check may ask about: the server as a whole ("") and the Signer service. */
const HEALTH_SERVICES = ["", "hsm_signer.v1.Signer"];

/** How often an open Watch stream looks at readiness (ready() is a plain function: it tells no one when it changes). */
const HEALTH_WATCH_INTERVAL_MS = 1000;

/** The handlers HealthImplementation gives addService, under the names grpc-js matches them by (the proto's lower-case method names). */
type HealthHandlers = {
  check: grpc.handleUnaryCall<unknown, unknown>;
  list: grpc.handleUnaryCall<unknown, unknown>;
  watch: grpc.handleServerStreamingCall<unknown, unknown>;
};

/**
 * A plaintext listener that serves only grpc.health.v1, for kubelet gRPC probes (which cannot
 * speak TLS). It reveals nothing but SERVING / NOT_SERVING.
 */
export async function startHealthServer(listen: string, ready: () => boolean): Promise<RunningServer> {
  const server = newGrpcServer();
  addHealthService(server, ready);
  return bindServer(server, listen, { insecure: true });
}

/**
 * grpc.health.v1 (grpc-health-check's HealthImplementation): "" and hsm_signer.v1.Signer are
 * SERVING while ready() says so; any other name is NOT_FOUND to Check and SERVICE_UNKNOWN to Watch.
 * HealthImplementation answers from the statuses it was last given, so every call sets them from
 * ready() first, and an open Watch stream sets them again every HEALTH_WATCH_INTERVAL_MS: no answer
 * is older than the call, and a Watch sees a change within a second.
 */
export function addHealthService(server: grpc.Server, ready: () => boolean): void {
  const health = new HealthImplementation();
  const current = new Map<string, ServingStatus>();
  const refresh = (): void => {
    const status: ServingStatus = ready() ? "SERVING" : "NOT_SERVING";
    for (const service of HEALTH_SERVICES) {
      // setStatus writes to every open Watch even when the status is the same; a Watch sends changes only.
      if (current.get(service) === status) continue;
      current.set(service, status);
      health.setStatus(service, status);
    }
  };
  refresh();
  health.addToServer({
    addService: (definition, handlers) => {
      // Typed loosely by the package (any handler under any name); these three are what it passes.
      const given = handlers as unknown as HealthHandlers;
      const fresh: HealthHandlers = {
        check: (call, callback) => {
          refresh();
          given.check(call, callback);
        },
        list: (call, callback) => {
          refresh();
          given.list(call, callback);
        },
        watch: (call) => {
          refresh();
          given.watch(call);
          const timer = setInterval(refresh, HEALTH_WATCH_INTERVAL_MS);
          call.on("cancelled", () => clearInterval(timer));
          call.on("close", () => clearInterval(timer));
        },
      };
      server.addService(definition, fresh);
    },
  });
}
