import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import { parse, parseAllDocuments } from "yaml";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

type Labels = Record<string, string>;
interface Selector {
  matchLabels?: Labels;
  matchExpressions?: unknown[];
}
interface Port {
  name?: string;
  containerPort?: number;
  port?: number | string;
  targetPort?: number | string;
}
interface Probe {
  grpc?: { port: number };
  httpGet?: { port: number | string; path?: string };
  periodSeconds?: number;
  timeoutSeconds?: number;
  failureThreshold?: number;
  tcpSocket?: { port: number | string };
}
interface Mount {
  name: string;
  mountPath: string;
  readOnly?: boolean;
  subPath?: string;
}
interface Volume {
  name: string;
  configMap?: { name: string };
  secret?: { secretName: string; defaultMode?: number };
  persistentVolumeClaim?: { claimName: string };
}
interface Container {
  args: string[];
  ports: Port[];
  volumeMounts: Mount[];
  env?: { name: string; valueFrom?: { secretKeyRef?: { name: string }; configMapKeyRef?: { name: string } } }[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  startupProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command: string[] }; sleep?: { seconds: number } } };
}
interface PodTemplate {
  metadata?: { labels?: Labels };
  spec: {
    containers: Container[];
    volumes: Volume[];
    securityContext?: { runAsUser?: number; runAsGroup?: number; fsGroup?: number };
    terminationGracePeriodSeconds?: number;
    topologySpreadConstraints?: { topologyKey: string; labelSelector?: Selector }[];
  };
}
/** The parts of the rendered objects these checks read (the Service's selector is plain labels). */
interface Obj {
  kind: string;
  metadata: { name: string; labels?: Labels };
  data?: Record<string, string>;
  spec: {
    selector?: Selector & Labels;
    podSelector?: Selector;
    template: PodTemplate;
    ports: Port[];
    ingress: { ports: Port[] }[];
    endpoints: { port: string }[];
  };
}
/** The service configuration's parts that name ports and files. */
interface ServiceConfig {
  listen?: string;
  tls: { certFile?: string; keyFile?: string; clientCaFile?: string };
  hsm: { module?: string; pinFile?: string };
  policy: { file: string };
  audit: { dir?: string; postgres?: { passwordFile?: string; tls?: { caFile?: string }; timeoutSeconds?: number; lockWaitSeconds?: number } };
  shutdown?: { graceSeconds?: number };
  metrics?: { listen?: string; grpcHealthListen?: string };
  admin?: { listen?: string; clientCaFile?: string };
}

const BASE = join(PROJECT_ROOT, "deploy/base");

function kubectlAvailable(): boolean {
  try {
    execFileSync("kubectl", ["version", "--client"], { stdio: "ignore", timeout: 30_000 });
    return true;
  } catch {
    return false;
  }
}

/** `kubectl kustomize DIR`, one object per YAML document. */
function render(dir: string): Obj[] {
  const out = execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8", timeout: 60_000 });
  return parseAllDocuments(out).map((d) => d.toJS() as Obj);
}

/** A label selector (matchLabels only; matchExpressions would need more) against a pod's labels. */
function selects(selector: Labels | undefined, labels: Labels): boolean {
  return Object.entries(selector ?? {}).every(([k, v]) => labels[k] === v);
}

function one(objects: Obj[], kind: string): Obj {
  const found = objects.filter((o) => o.kind === kind);
  assert.equal(found.length, 1, `one ${kind} in the rendered base`);
  return found[0] as Obj;
}

describe("deploy/base as kubectl kustomize renders it", function () {
  this.timeout(120_000);
  let objects: Obj[];
  let deployment: Obj;
  let pod: PodTemplate;
  let container: Container;
  let podLabels: Labels;
  let readme: string;

  before(function () {
    if (!kubectlAvailable()) {
      console.log("      (skipped: kubectl is not installed, so deploy/base cannot be rendered)");
      this.skip();
    }
    objects = render(BASE);
    deployment = one(objects, "Deployment");
    pod = deployment.spec.template;
    container = pod.spec.containers[0] as Container;
    podLabels = pod.metadata?.labels ?? {};
    readme = readFileSync(join(PROJECT_ROOT, "README.md"), "utf8");
  });

  it("every selector is non-empty and picks this app's pods only, not the namespace's other pods", () => {
    assert.equal(podLabels["app.kubernetes.io/name"], "hsm-signer");
    const service = one(objects, "Service");
    const selectors: [string, Selector | undefined][] = [
      ["Deployment spec.selector", deployment.spec.selector],
      ["PodDisruptionBudget spec.selector", one(objects, "PodDisruptionBudget").spec.selector],
      ["NetworkPolicy spec.podSelector", one(objects, "NetworkPolicy").spec.podSelector],
    ];
    const neighbours: Labels[] = [{}, { "app.kubernetes.io/name": "postgresql" }, { app: "hsm-signer" }];
    for (const [where, sel] of [...selectors, ["Service spec.selector", { matchLabels: service.spec.selector }] as [string, Selector]]) {
      assert.equal(sel?.matchExpressions, undefined, `${where}: matchExpressions are not expected`);
      const matchLabels = sel?.matchLabels as Labels | undefined;
      assert.ok(matchLabels && Object.keys(matchLabels).length > 0, `${where} is empty: it selects every pod in the namespace`);
      assert.ok(selects(matchLabels, podLabels), `${where} does not select the Deployment's pods`);
      for (const other of neighbours) assert.ok(!selects(matchLabels, other), `${where} also selects a pod labelled ${JSON.stringify(other)}`);
    }
    // The audit-migrate Job's pod (no readiness probe: Ready while it runs) is no server: the
    // Service would route gRPC calls to it (connection refused), the PDB count it, the
    // NetworkPolicy apply to it. The Deployment's selector may match it (immutable, left as
    // released): its ReplicaSet never adopts a pod the Job owns.
    const jobPodLabels = one(objects, "Job").spec.template.metadata?.labels ?? {};
    assert.equal(jobPodLabels["app.kubernetes.io/name"], "hsm-signer", "kustomize labels the Job's pod as the app's (the case checked here)");
    for (const [where, sel] of [...selectors.slice(1), ["Service spec.selector", { matchLabels: service.spec.selector }] as [string, Selector]])
      assert.ok(!selects(sel?.matchLabels, jobPodLabels), `${where} selects the audit-migrate Job's pod ${JSON.stringify(jobPodLabels)}`);
    // The ServiceMonitor selects the Service (by its labels), and scrapes a port the Service has.
    const monitor = one(objects, "ServiceMonitor");
    const byService = monitor.spec.selector?.matchLabels ?? {};
    assert.ok(Object.keys(byService).length > 0 && selects(byService, service.metadata.labels ?? {}), "the ServiceMonitor does not select the Service");
    assert.ok(!selects(byService, { "app.kubernetes.io/name": "postgresql" }));
    const servicePorts = service.spec.ports.map((p) => p.name);
    for (const e of monitor.spec.endpoints) assert.ok(servicePorts.includes(e.port), `ServiceMonitor port ${e.port} is not a Service port`);
  });

  it("a slow start is not restarted in a loop, a stopping pod first leaves the endpoints, replicas spread over nodes", () => {
    const config = parse(objects.find((o) => o.kind === "ConfigMap" && typeof o.data?.["config.yaml"] === "string")?.data?.["config.yaml"] ?? "") as ServiceConfig;
    // /healthz is served only once the audit store and the HSM are open (serve.ts): until then the
    // liveness probe would fail and restart the container, so a startup probe holds it back for
    // longer than the audit database's connect and lock wait (defaults 10 s and 60 s) take.
    const startup = container.startupProbe;
    assert.equal(startup?.httpGet?.path, "/healthz", "a startup probe on /healthz");
    const window = (startup?.periodSeconds ?? 10) * (startup?.failureThreshold ?? 3);
    const pg = config.audit.postgres;
    const needed = (pg?.timeoutSeconds ?? 10) + (pg?.lockWaitSeconds ?? 60);
    assert.ok(window > needed + 30, `the startup probe allows ${window} s; the database alone may take ${needed} s, and the HSM more`);
    // preStop, then the service's own grace, inside the pod's termination grace period.
    const preStop = container.lifecycle?.preStop;
    const pause = preStop?.sleep?.seconds ?? Number(preStop?.exec?.command[1] ?? 0);
    assert.ok(pause > 0, "a preStop pause while the endpoints are removed");
    assert.ok(pause + (config.shutdown?.graceSeconds ?? 10) < (pod.spec.terminationGracePeriodSeconds ?? 30), "preStop + shutdown.graceSeconds fit the termination grace period");
    const spread = pod.spec.topologySpreadConstraints?.find((t) => t.topologyKey === "kubernetes.io/hostname");
    assert.ok(spread && selects(spread.labelSelector?.matchLabels, podLabels), "replicas spread over nodes, selecting the server pods");
  });

  it("a slow or unreachable network HSM does not get replicas restarted: liveness outlasts the PKCS#11 calls that hold the event loop", () => {
    // The token check (every 5 s) and each reconnection attempt call PKCS#11 synchronously on the
    // event loop that answers /healthz, each for as long as the HSM's client waits for its network.
    // Kubernetes' defaults (timeoutSeconds 1, failureThreshold 3) restarted a replica within 30 s
    // of such waits, though a restart cannot bring the HSM back and a start without it exits.
    const live = container.livenessProbe;
    assert.equal(live?.httpGet?.path, "/healthz", "liveness on /healthz");
    const timeout = live?.timeoutSeconds ?? 1;
    assert.ok(timeout >= 10, `a liveness probe waits ${timeout} s for an answer; a PKCS#11 call to a network HSM may hold the event loop for longer`);
    const window = (live?.periodSeconds ?? 10) * (live?.failureThreshold ?? 3);
    assert.ok(window >= 60, `the container is restarted after ${window} s without an answer to /healthz; an HSM failover holds it longer`);
  });

  it("a PodDisruptionBudget that keeps 2 ready replicas, and lets unready ones be evicted (a lost HSM does not block node drains)", () => {
    const pdb = one(objects, "PodDisruptionBudget").spec as Obj["spec"] & { minAvailable?: number; unhealthyPodEvictionPolicy?: string };
    const replicas = (deployment.spec as Obj["spec"] & { replicas?: number }).replicas ?? 1;
    assert.ok(pdb.minAvailable !== undefined && pdb.minAvailable < replicas, `minAvailable ${String(pdb.minAvailable)} of ${replicas} replicas leaves no eviction possible`);
    // A lost HSM (or a refused PIN) makes every replica unready at once: with IfHealthyBudget,
    // the default, no pod could then be evicted until the HSM came back.
    assert.equal(pdb.unhealthyPodEvictionPolicy, "AlwaysAllow");
  });

  it("the audit-migrate Job can read its 0400 Secret files as uid 10001: fsGroup, as in the Deployment", () => {
    const job = one(objects, "Job").spec.template;
    for (const [where, p] of [
      ["Deployment", pod],
      ["Job", job],
    ] as [string, PodTemplate][]) {
      const sc = p.spec.securityContext ?? {};
      // A Secret volume's files are root's; mode 0400 leaves them unreadable to another uid unless
      // fsGroup makes them that group's (kubelet adds group read then).
      const ownerOnly = p.spec.volumes.filter((v) => v.secret && ((v.secret.defaultMode ?? 0o644) & 0o044) === 0);
      if (ownerOnly.length > 0 && sc.runAsUser !== 0)
        assert.equal(sc.fsGroup, sc.runAsGroup, `${where}: ${ownerOnly.map((v) => v.name).join(", ")} mode 0400 without fsGroup: EACCES for uid ${String(sc.runAsUser)}`);
    }
    assert.deepEqual(job.spec.securityContext, pod.spec.securityContext, "the Job's pod securityContext matches the Deployment's");
  });

  it("the audit-migrate Job grants the service's database role (audit.postgres.user), which nothing else would", () => {
    const cm = objects.find((o) => o.kind === "ConfigMap" && typeof o.data?.["config.yaml"] === "string");
    const user = (parse(cm?.data?.["config.yaml"] ?? "") as { audit: { postgres?: { user?: string } } }).audit.postgres?.user;
    assert.ok(user, "config.yaml names the service's database user");
    const args = (one(objects, "Job").spec.template.spec.containers[0] as Container).args;
    assert.deepEqual(args.slice(0, 2), ["audit", "migrate"]);
    assert.equal(args[args.indexOf("--grant-to") + 1], user, `the Job's --grant-to is ${user}`);
  });

  it("every volume, port, ConfigMap, Secret and claim it names exists, or the README says the operator provides it", () => {
    const rendered = (kind: string): string[] => objects.filter((o) => o.kind === kind).map((o) => o.metadata.name);
    const operatorProvided = (what: string, name: string): void => {
      assert.ok(readme.includes(`\`${name}\``), `${what} "${name}" is neither in deploy/base nor named in the README as provided by the operator`);
    };
    const volumes = new Map<string, Volume>(pod.spec.volumes.map((v) => [v.name, v]));
    for (const m of container.volumeMounts) assert.ok(volumes.has(m.name), `volumeMount ${m.name} has no volume`);
    for (const v of volumes.values()) {
      if (v.configMap && !rendered("ConfigMap").includes(v.configMap.name)) operatorProvided("ConfigMap", v.configMap.name);
      if (v.secret && !rendered("Secret").includes(v.secret.secretName)) operatorProvided("Secret", v.secret.secretName);
      if (v.persistentVolumeClaim) operatorProvided("PersistentVolumeClaim", v.persistentVolumeClaim.claimName);
    }
    for (const env of container.env ?? []) {
      const ref = env.valueFrom?.secretKeyRef ?? env.valueFrom?.configMapKeyRef;
      if (ref && !rendered("Secret").includes(ref.name) && !rendered("ConfigMap").includes(ref.name)) operatorProvided("env reference", ref.name);
    }

    const ports = container.ports;
    const byName = new Map(ports.map((p) => [p.name, p.containerPort]));
    const numbers = new Set(ports.map((p) => p.containerPort));
    const portOf = (p: string | number | undefined, where: string): number => {
      const n = typeof p === "number" ? p : byName.get(p);
      assert.ok(p !== undefined, `${where}: no port`);
      assert.ok(n !== undefined && numbers.has(n), `${where}: port ${p} is not a container port`);
      return n;
    };
    for (const probe of [container.readinessProbe, container.livenessProbe, container.startupProbe].filter((x): x is Probe => x !== undefined))
      portOf(probe.grpc?.port ?? probe.httpGet?.port ?? probe.tcpSocket?.port, "probe");
    for (const p of one(objects, "Service").spec.ports) portOf(p.targetPort, `Service port ${p.name}`);
    // Every port the container serves is let in by the NetworkPolicy, and nothing else.
    const allowed = new Set(one(objects, "NetworkPolicy").spec.ingress.flatMap((r) => r.ports.map((p) => portOf(p.port, "NetworkPolicy"))));
    assert.deepEqual([...allowed].sort(), [...numbers].sort());

    // The configuration the container is started with: in a mounted ConfigMap, and what it
    // listens on and reads is in the pod.
    const mounted = (path: string): { mount: Mount; volume: Volume; key: string } => {
      const mount = container.volumeMounts.find((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`));
      assert.ok(mount, `${path} is on no mounted volume`);
      return { mount, volume: volumes.get(mount.name) as Volume, key: posix.relative(mount.mountPath, path) };
    };
    const fromConfigMap = (path: string): string => {
      const { volume, key } = mounted(path);
      const cm = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === volume.configMap?.name);
      assert.ok(cm, `${path} is not on a ConfigMap of the base`);
      const text = cm.data?.[key];
      assert.ok(typeof text === "string", `ConfigMap ${cm.metadata.name} has no ${key}`);
      return text;
    };
    const args = container.args;
    const config = parse(fromConfigMap(args[args.indexOf("--config") + 1] as string)) as ServiceConfig;
    for (const listen of [config.listen, config.admin?.listen, config.metrics?.listen, config.metrics?.grpcHealthListen].filter(Boolean) as string[])
      portOf(Number(listen.split(":").pop()), `listen address ${listen}`);
    for (const file of [
      config.tls.certFile,
      config.tls.keyFile,
      config.tls.clientCaFile,
      config.admin?.clientCaFile,
      config.hsm.module,
      config.hsm.pinFile,
      config.audit.dir,
      config.audit.postgres?.passwordFile,
      config.audit.postgres?.tls?.caFile,
    ].filter(Boolean) as string[])
      mounted(file);
    fromConfigMap(config.policy.file);
    // The audit goes to PostgreSQL (issue 13): nothing on the node is written, never an emptyDir
    // alone for the audit; with a local audit.dir that one mount would be the only writable one.
    assert.ok(config.audit.postgres, "the base keeps its audit in PostgreSQL, not on the node");
    assert.ok(!pod.spec.volumes.some((v) => "emptyDir" in v && config.audit.dir !== undefined), "an audit.dir on an emptyDir loses the audit with the pod");
    const audit = config.audit.dir ? mounted(config.audit.dir).mount : undefined;
    if (audit) assert.equal(audit.readOnly ?? false, false);
    for (const m of container.volumeMounts) if (m !== audit) assert.equal(m.readOnly, true, `${m.mountPath} is writable`);
  });

  it("the policy ConfigMap keeps its name (updated in place, reloaded) while a config change rolls the pods", () => {
    const config = parse(objects.find((o) => o.kind === "ConfigMap" && typeof o.data?.["config.yaml"] === "string")?.data?.["config.yaml"] ?? "") as ServiceConfig;
    const policyMount = container.volumeMounts.find((m) => config.policy.file.startsWith(`${m.mountPath}/`)) as Mount;
    assert.equal(policyMount.subPath, undefined, "a subPath mount never sees ConfigMap updates");
    const policyVolume = pod.spec.volumes.find((v) => v.name === policyMount.name) as Volume;
    assert.equal(policyVolume.configMap?.name, "hsm-signer-policy", "the policy ConfigMap's name has no content hash");
    assert.match(readme, /hsm-signer-policy/);

    // Render a copy of the base after editing each file: a policy edit leaves the pod template
    // as it was (no rollout, the running pods reload it); a config edit changes it (a rollout).
    const copy = mkdtempSync(join(tmpdir(), "hsm-signer-kustomize-"));
    try {
      cpSync(BASE, copy, { recursive: true });
      const template = (): string => JSON.stringify(one(render(copy), "Deployment").spec.template);
      const before = template();
      writeFileSync(join(copy, "policy.yaml"), `${readFileSync(join(copy, "policy.yaml"), "utf8")}# edited\n`);
      assert.equal(template(), before, "a policy change rolls the pods");
      const policyCm = render(copy).find((o) => o.kind === "ConfigMap" && o.metadata.name === "hsm-signer-policy");
      assert.match(policyCm?.data?.["policy.yaml"] ?? "", /# edited/);
      writeFileSync(join(copy, "config.yaml"), `${readFileSync(join(copy, "config.yaml"), "utf8")}# edited\n`);
      assert.notEqual(template(), before, "a config change (read only at start) does not roll the pods");
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
  });
});

describe("deploy/components/egress: the egress NetworkPolicy, with the patch its kustomization documents", function () {
  this.timeout(120_000);
  interface EgressRule {
    to?: { namespaceSelector?: Selector; podSelector?: Selector; ipBlock?: { cidr: string } }[];
    ports: { port: number; protocol: string }[];
  }
  interface EgressPolicy {
    kind: string;
    metadata: { name: string; namespace?: string };
    spec: { podSelector: Selector; policyTypes: string[]; egress: EgressRule[] };
  }

  it("an overlay of the base with it: the server's and the Job's pods reach DNS, the audit database and the patched HSM address, in the base's namespace", function () {
    if (!kubectlAvailable()) this.skip();
    const component = join(PROJECT_ROOT, "deploy/components/egress");
    // The overlay lines the component's kustomization.yaml shows in its comment, as a user copies them.
    const documented = readFileSync(join(component, "kustomization.yaml"), "utf8")
      .split("\n")
      .filter((l) => l.startsWith("#   "))
      .map((l) => l.slice(4))
      .join("\n");
    const overlay = mkdtempSync(join(tmpdir(), "hsm-signer-egress-"));
    try {
      const rel = (dir: string): string => posix.relative(overlay, dir);
      writeFileSync(join(overlay, "kustomization.yaml"), `resources: [${rel(BASE)}]\n${documented.replace("../../components/egress", rel(component))}\n`);
      const objects = render(overlay);
      const policy = objects.find((o) => o.kind === "NetworkPolicy" && o.metadata.name === "hsm-signer-egress") as unknown as EgressPolicy | undefined;
      assert.ok(policy, "the overlay renders the egress policy");
      const deployment = one(objects, "Deployment") as Obj & { metadata: { namespace?: string } };
      assert.equal(policy.metadata.namespace, deployment.metadata.namespace);
      assert.deepEqual(policy.spec.policyTypes, ["Egress"]);
      const matchLabels = policy.spec.podSelector.matchLabels as Labels;
      assert.ok(Object.keys(matchLabels).length > 0, "an empty podSelector would be every pod in the namespace");
      assert.ok(selects(matchLabels, deployment.spec.template.metadata?.labels ?? {}), "the server's pods");
      assert.ok(selects(matchLabels, one(objects, "Job").spec.template.metadata?.labels ?? {}), "the schema Job's pod (it reaches the database too)");
      const [dns, db, hsm] = policy.spec.egress;
      assert.deepEqual(
        dns?.ports.map((p) => `${p.port}/${p.protocol}`),
        ["53/UDP", "53/TCP"],
      );
      // The database rule names the namespace of audit.postgres.host (<service>.<namespace>.svc), on PostgreSQL's port.
      const config = parse(readFileSync(join(BASE, "config.yaml"), "utf8")) as ServiceConfig & { audit: { postgres: { host: string; port?: number } } };
      const namespace = config.audit.postgres.host.split(".")[1];
      assert.equal(db?.to?.[0]?.namespaceSelector?.matchLabels?.["kubernetes.io/metadata.name"], namespace);
      assert.deepEqual(
        db?.ports.map((p) => p.port),
        [config.audit.postgres.port ?? 5432],
      );
      assert.equal(hsm?.to?.[0]?.ipBlock?.cidr, "10.20.0.15/32", "the documented patch replaced the placeholder");
      assert.deepEqual(
        hsm?.ports.map((p) => p.port),
        [1792],
      );
    } finally {
      rmSync(overlay, { recursive: true, force: true });
    }
  });
});

describe("deploy/base/prometheusrule.yaml", () => {
  interface Rule {
    alert: string;
    expr: string;
    labels?: { severity?: string };
    annotations?: { summary?: string };
  }
  const doc = parse(readFileSync(join(BASE, "prometheusrule.yaml"), "utf8")) as { kind: string; spec: { groups: { rules: Rule[] }[] } };
  const rules = doc.spec.groups.flatMap((g) => g.rules);

  it("is part of the base, and every alert has a severity and a summary", () => {
    const k = parse(readFileSync(join(BASE, "kustomization.yaml"), "utf8")) as { resources: string[] };
    assert.ok(k.resources.includes("prometheusrule.yaml"));
    assert.equal(doc.kind, "PrometheusRule");
    assert.ok(rules.length >= 8);
    for (const r of rules) {
      assert.match(r.labels?.severity ?? "", /^(critical|warning)$/, r.alert);
      assert.ok((r.annotations?.summary ?? "").length > 0, r.alert);
    }
  });

  it("alerts only on metrics and label values the service exports (a renamed metric fails here, not silently in production)", async () => {
    const { SignerMetrics } = await import("../../src/metrics/index.js");
    const { ERROR_CODES } = await import("../../src/errors/index.js");
    const { TLS_HANDSHAKE_FAILURE_REASONS } = await import("../../src/tls/handshake-failure-reasons.js");
    const exported = new Set(new SignerMetrics({ version: "test" }).registry.getMetricsAsArray().map((m) => m.name));
    const labelValues: Record<string, Set<string>> = {
      reason: new Set(TLS_HANDSHAKE_FAILURE_REASONS),
      result: new Set(["OK", ...ERROR_CODES, "applied", "rejected"]),
    };
    for (const r of rules) {
      const names = [...r.expr.matchAll(/hsm_signer_[a-z_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, ""));
      assert.ok(names.length > 0, r.alert);
      for (const n of names) assert.ok(exported.has(n), `${r.alert}: ${n} is not exported`);
      for (const [, label, values] of r.expr.matchAll(/(reason|result)=~?"([^"]+)"/g))
        for (const v of (values as string).split("|")) assert.ok(labelValues[label as string]?.has(v), `${r.alert}: ${label}="${v}" never appears`);
    }
  });
});
