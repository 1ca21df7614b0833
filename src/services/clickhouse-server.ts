import { mkdirSync, writeFileSync, existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { ManagedProcess } from "./managed-process.ts";
import { freePort } from "./ports.ts";
import type { PortUse } from "./port-check.ts";

export interface LocalClickHouseOptions {
  dataDir: string;
  httpPort?: number;
  tcpPort?: number;
  binary?: string;
  /** Makes this server one replica of a cluster (ReplicatedMergeTree, ON CLUSTER DDL). */
  replication?: ReplicationOptions;
}

/**
 * What a replica needs: ZooKeeper, its macros (`{shard}`, `{replica}` in table paths) and the
 * cluster in `remote_servers`, which ON CLUSTER DDL is sent to. Written in the 18.16 format that
 * current servers still read.
 */
export interface ReplicationOptions {
  zookeeper: { host: string; port: number }[];
  /** ZooKeeper session timeout; a replica killed and restarted waits for its old session to expire. */
  sessionTimeoutMs?: number;
  cluster: string;
  /** The cluster's shards, each a list of replicas by native (TCP) port. */
  shards: { host: string; port: number }[][];
  shard: string;
  replica: string;
}

const xml = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

export function replicationConfig(r: ReplicationOptions): string {
  const zk = r.zookeeper
    .map((n, i) => `<node index="${i + 1}"><host>${xml(n.host)}</host><port>${n.port}</port></node>`)
    .join("");
  const shards = r.shards
    .map(
      (replicas) =>
        `<shard><internal_replication>true</internal_replication>${replicas.map((x) => `<replica><host>${xml(x.host)}</host><port>${x.port}</port></replica>`).join("")}</shard>`,
    )
    .join("");
  return `  <zookeeper>${zk}${r.sessionTimeoutMs ? `<session_timeout_ms>${r.sessionTimeoutMs}</session_timeout_ms>` : ""}</zookeeper>
  <macros><shard>${xml(r.shard)}</shard><replica>${xml(r.replica)}</replica></macros>
  <remote_servers><${r.cluster}>${shards}</${r.cluster}></remote_servers>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
  <!-- Replicas fetch parts from each other at this address. -->
  <interserver_http_host>127.0.0.1</interserver_http_host>
`;
}

async function waitForHttp(url: string, timeoutMs: number, alive: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const r = await fetch(`${url}/ping`);
      if (r.ok) return;
    } catch {}
    if (!alive()) throw new Error("process exited before answering /ping");
    if (Date.now() > deadline) throw new Error(`no answer on ${url}/ping after ${timeoutMs} ms`);
    await Bun.sleep(100);
  }
}

/**
 * A clickhouse-server on loopback, unprivileged, from a config file written per data dir
 * (Debian's 18.16 package works this way, as do current servers).
 */
export class LocalClickHouse extends ManagedProcess {
  private constructor(
    readonly httpPort: number,
    readonly dataDir: string,
    readonly tcpPort: number,
    readonly interserverPort: number,
    cmd: string[],
  ) {
    super({
      name: "clickhouse-server",
      cmd,
      logFile: join(dataDir, "clickhouse-server.out"),
      ready: (alive) => waitForHttp(`http://127.0.0.1:${httpPort}`, 60_000, alive),
      listens: LocalClickHouse.ports(httpPort, tcpPort, interserverPort),
    });
  }

  /** Every port its config opens, as `npm start` checks them before starting it. */
  static ports(httpPort: number, tcpPort: number, interserverPort?: number): PortUse[] {
    const hint =
      "stop it, set CLICKHOUSE_HTTP_PORT and CLICKHOUSE_TCP_PORT to free ports, or set CLICKHOUSE_URL to use a ClickHouse server that is already running";
    const uses: PortUse[] = [
      { port: httpPort, role: "local clickhouse-server HTTP", hint },
      { port: tcpPort, role: "local clickhouse-server native TCP", hint },
    ];
    if (interserverPort)
      uses.push({
        port: interserverPort,
        role: "local clickhouse-server interserver HTTP",
        hint: "stop it, or start again (this port is picked at random)",
      });
    return uses;
  }

  get url(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  static async create(o: LocalClickHouseOptions): Promise<LocalClickHouse> {
    const dir = resolve(o.dataDir);
    const httpPort = o.httpPort ?? (await freePort());
    const tcpPort = o.tcpPort ?? (await freePort());
    const interserver = await freePort();
    if (o.replication && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(o.replication.cluster))
      throw new Error(`cluster name "${o.replication.cluster}" is not a valid XML element name`);
    for (const d of ["data", "tmp", "user_files", "format_schemas", "log"])
      mkdirSync(join(dir, d), { recursive: true });
    const users = existsSync("/etc/clickhouse-server/users.xml")
      ? "/etc/clickhouse-server/users.xml"
      : join(dir, "users.xml");
    if (!existsSync(users)) writeFileSync(users, DEFAULT_USERS);
    const config = join(dir, "config.xml");
    writeFileSync(
      config,
      `<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>${dir}/log/server.log</log><errorlog>${dir}/log/error.log</errorlog><size>10M</size><count>2</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>${httpPort}</http_port>
  <tcp_port>${tcpPort}</tcp_port>
  <interserver_http_port>${interserver}</interserver_http_port>
  <path>${dir}/data/</path>
  <tmp_path>${dir}/tmp/</tmp_path>
  <user_files_path>${dir}/user_files/</user_files_path>
  <format_schema_path>${dir}/format_schemas/</format_schema_path>
  <users_config>${users}</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
${o.replication ? replicationConfig(o.replication) : ""}</yandex>
`,
    );
    return new LocalClickHouse(httpPort, dir, tcpPort, interserver, [
      o.binary ?? "clickhouse-server",
      `--config-file=${config}`,
    ]);
  }
}

const DEFAULT_USERS = `<?xml version="1.0"?>
<yandex>
  <profiles><default/></profiles>
  <users><default><password></password><networks><ip>::1</ip><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default/></quotas>
</yandex>
`;
