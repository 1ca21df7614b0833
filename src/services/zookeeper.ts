import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { ManagedProcess } from "./managed-process.ts";
import { freePort } from "./ports.ts";

/** Debian's `zookeeper` package: the server jar, whose manifest names the jars it needs. */
export const ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar";
/** A logging backend for ZooKeeper's slf4j (without one it logs nothing). */
const SLF4J_SIMPLE = "/usr/share/java/slf4j-simple.jar";

export interface LocalZooKeeperOptions {
  dataDir: string;
  port?: number;
  /** Classpath holding org.apache.zookeeper; Debian's jar by default. */
  classpath?: string;
  java?: string;
  /** ZooKeeper's tick; sessions may last 2 to 20 ticks. */
  tickTimeMs?: number;
}

/**
 * Whether the server serves sessions: `srvr` names its mode only then. (`ruok` answers imok as soon
 * as the port is open, before sessions are accepted, and an 18.16 clickhouse-server whose first
 * ZooKeeper handshake is refused can crash.)
 */
async function serving(port: number): Promise<boolean> {
  return new Promise<boolean>((done) => {
    let text = "";
    const timer = setTimeout(() => done(false), 1000);
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open: (s) => void s.write("srvr"),
        data: (_s, d) => void (text += d.toString()),
        close: () => (clearTimeout(timer), done(/^Mode: /m.test(text))),
        error: () => (clearTimeout(timer), done(false)),
      },
    }).catch(() => (clearTimeout(timer), done(false)));
  });
}

/**
 * A standalone ZooKeeper on loopback, unprivileged, from a zoo.cfg written per data dir, run with
 * Java straight from Debian's `zookeeper` package (its systemd unit and init scripts assume root
 * and /var/lib/zookeeper). For replicated ClickHouse in tests.
 */
export class LocalZooKeeper extends ManagedProcess {
  private constructor(
    readonly port: number,
    readonly dataDir: string,
    cmd: string[],
  ) {
    super({
      name: "zookeeper",
      cmd,
      logFile: join(dataDir, "zookeeper.out"),
      ready: async (alive) => {
        const deadline = Date.now() + 60_000;
        while (!(await serving(port))) {
          if (!alive()) throw new Error("process exited before serving");
          if (Date.now() > deadline) throw new Error(`not serving on 127.0.0.1:${port} after 60 s`);
          await Bun.sleep(100);
        }
      },
    });
  }

  /** Whether Debian's package (or the given classpath) is installed. */
  static available(classpath = ZOOKEEPER_JAR): boolean {
    return classpath.split(":").every((p) => existsSync(p)) && Bun.which("java") !== null;
  }

  get connect(): { host: string; port: number } {
    return { host: "127.0.0.1", port: this.port };
  }

  static async create(o: LocalZooKeeperOptions): Promise<LocalZooKeeper> {
    const dir = resolve(o.dataDir);
    const port = o.port ?? (await freePort());
    mkdirSync(join(dir, "data"), { recursive: true });
    const config = join(dir, "zoo.cfg");
    writeFileSync(
      config,
      [
        `tickTime=${o.tickTimeMs ?? 500}`,
        `dataDir=${dir}/data`,
        `clientPort=${port}`,
        "clientPortAddress=127.0.0.1",
        "maxClientCnxns=0",
        "admin.enableServer=false",
        "4lw.commands.whitelist=ruok,srvr,mntr",
        // A test's data is thrown away: no need to fsync every transaction.
        "forceSync=no",
        "",
      ].join("\n"),
    );
    let classpath = o.classpath ?? ZOOKEEPER_JAR;
    if (!o.classpath && existsSync(SLF4J_SIMPLE)) classpath += `:${SLF4J_SIMPLE}`;
    const cmd = [
      o.java ?? "java",
      "-Xmx256m",
      "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
      "-Dzookeeper.admin.enableServer=false",
      "-cp",
      classpath,
      "org.apache.zookeeper.server.quorum.QuorumPeerMain",
      config,
    ];
    return new LocalZooKeeper(port, dir, cmd);
  }
}
