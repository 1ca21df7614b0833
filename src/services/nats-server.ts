import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { ManagedProcess } from "./managed-process.ts";
import { freePort, waitForPort } from "./ports.ts";
import type { PortUse } from "./port-check.ts";

/** Membership of a JetStream cluster: every member names the same cluster and routes to the others. */
export interface NatsClusterOptions {
  /** The cluster's name, the same on every member. */
  name: string;
  /** This server's route port on loopback (free one when absent). */
  port?: number;
  /**
   * The members' route ports (or `nats-route://host:port` URLs). Listing every member, this one
   * included, is fine: a server recognises and drops its own route.
   */
  routes: (number | string)[];
}

export interface LocalNatsOptions {
  dataDir: string;
  port?: number;
  binary?: string;
  /** `server_name`; JetStream clustering needs a unique one per member. */
  serverName?: string;
  /** Join a cluster (JetStream clustered mode needs serverName too). */
  cluster?: NatsClusterOptions;
  /** Extra arguments. */
  args?: string[];
}

const routeUrl = (r: number | string) => (typeof r === "number" ? `nats-route://127.0.0.1:${r}` : r);

/**
 * A `nats-server -js` on loopback with its store under dataDir, alone or as a member of a
 * cluster. kill()/start() keep the same ports, name and store, as a restarted server would.
 */
export class LocalNats extends ManagedProcess {
  private constructor(
    readonly port: number,
    readonly dataDir: string,
    readonly serverName: string | undefined,
    readonly clusterPort: number | undefined,
    cmd: string[],
  ) {
    super({
      name: serverName ? `nats-server ${serverName}` : "nats-server",
      cmd,
      logFile: join(dataDir, "nats-server.log"),
      ready: (alive) => waitForPort(port, 15_000, "127.0.0.1", alive),
      listens: LocalNats.ports(port, clusterPort),
    });
  }

  /** What it listens on (no monitoring port: it is not enabled), as `npm start` checks them before starting it. */
  static ports(port: number, clusterPort?: number): PortUse[] {
    const hint = "stop it, set NATS_PORT to a free port, or set NATS_URL to use a NATS server that is already running";
    const uses: PortUse[] = [{ port, role: "local nats-server", hint }];
    if (clusterPort)
      uses.push({
        port: clusterPort,
        role: "local nats-server cluster routes",
        hint: "stop it, or give the cluster another port",
      });
    return uses;
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  static async create(o: LocalNatsOptions): Promise<LocalNats> {
    const port = o.port ?? (await freePort());
    mkdirSync(join(o.dataDir, "jetstream"), { recursive: true });
    const cmd = [
      o.binary ?? "nats-server",
      "-js",
      "-a",
      "127.0.0.1",
      "-p",
      String(port),
      "-sd",
      join(o.dataDir, "jetstream"),
    ];
    if (o.serverName) cmd.push("--server_name", o.serverName);
    let clusterPort: number | undefined;
    if (o.cluster) {
      if (!o.serverName)
        throw new Error("a clustered nats-server needs a serverName (JetStream identifies peers by it)");
      clusterPort = o.cluster.port ?? (await freePort());
      cmd.push("--cluster_name", o.cluster.name, "--cluster", `nats://127.0.0.1:${clusterPort}`);
      const routes = o.cluster.routes.map(routeUrl).filter((r) => r !== routeUrl(clusterPort!));
      if (routes.length) cmd.push("--routes", routes.join(","));
    }
    cmd.push(...(o.args ?? []));
    return new LocalNats(port, o.dataDir, o.serverName, clusterPort, cmd);
  }
}
