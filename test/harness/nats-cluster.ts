import { rmSync } from "node:fs";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { DeliverPolicy, jetstream, jetstreamManager, type JetStreamManager, type StreamInfo } from "@nats-io/jetstream";
import { LocalNats } from "../../src/services/nats-server.ts";
import { freePort } from "../../src/services/ports.ts";
import { IDS_HEADER } from "../../src/bus/shard-writer.ts";
import { STREAM, connectionSubjects } from "../../src/bus/subjects.ts";
import { tempDir } from "./services.ts";

/**
 * A JetStream cluster of `nats-server` processes on loopback: routes between all of them, each
 * with its own store, each killable (SIGKILL) and restartable on the same ports and store.
 */
export class NatsCluster {
  #admin?: NatsConnection;

  private constructor(
    readonly servers: LocalNats[],
    readonly dir: string,
  ) {}

  static async start(size = 3, name = "tributary"): Promise<NatsCluster> {
    const dir = tempDir("nats-cluster");
    const routePorts = await Promise.all(Array.from({ length: size }, () => freePort()));
    const servers = await Promise.all(
      routePorts.map((port, i) =>
        LocalNats.create({
          dataDir: join(dir, `n${i + 1}`),
          serverName: `n${i + 1}`,
          cluster: { name, port, routes: routePorts },
        }),
      ),
    );
    const cluster = new NatsCluster(servers, dir);
    try {
      await Promise.all(servers.map((s) => s.start()));
      await cluster.ready();
    } catch (e) {
      await cluster.cleanup();
      throw e;
    }
    return cluster;
  }

  /** Every server, as NATS_URL takes them. */
  get url(): string {
    return this.servers.map((s) => s.url).join(",");
  }

  server(name: string): LocalNats {
    const s = this.servers.find((x) => x.serverName === name);
    if (!s) throw new Error(`no server ${name}`);
    return s;
  }

  /** An admin connection to every server, reconnecting forever (for assertions, not for the nodes). */
  async admin(): Promise<{ nc: NatsConnection; jsm: JetStreamManager }> {
    this.#admin ??= await connect({
      servers: this.servers.map((s) => s.url),
      maxReconnectAttempts: -1,
      reconnectTimeWait: 100,
      name: "test-admin",
    });
    return { nc: this.#admin, jsm: await jetstreamManager(this.#admin, { timeout: 2000, checkAPI: false }) };
  }

  /**
   * Resolves once JetStream can place a stream on every server: the meta group has a leader and
   * every peer has reported to it (a probe stream with one replica per server is created and deleted).
   */
  async ready(timeoutMs = 30_000): Promise<void> {
    const { jsm } = await this.admin();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await jsm.streams.add({
          name: "CLUSTER_PROBE",
          subjects: ["cluster.probe"],
          num_replicas: this.servers.length,
        });
        await jsm.streams.delete("CLUSTER_PROBE");
        return;
      } catch (e) {
        if (Date.now() > deadline)
          throw new Error(`JetStream cluster not ready after ${timeoutMs} ms: ${(e as Error).message}`);
      }
      await Bun.sleep(200);
    }
  }

  async streamInfo(stream = STREAM): Promise<StreamInfo> {
    const { jsm } = await this.admin();
    return jsm.streams.info(stream);
  }

  /** server_name of the stream's leader, once it has one. */
  async streamLeader(stream = STREAM, timeoutMs = 20_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const leader = await this.streamInfo(stream).then(
        (i) => i.cluster?.leader,
        () => undefined,
      );
      if (leader) return leader;
      if (Date.now() > deadline) throw new Error(`stream ${stream} has no leader after ${timeoutMs} ms`);
      await Bun.sleep(200);
    }
  }

  /** Moves the stream's leadership (random new leader each step-down) until `name` leads it. */
  async makeLeader(name: string, stream = STREAM, attempts = 20): Promise<void> {
    const { nc } = await this.admin();
    for (let i = 0; i < attempts; i++) {
      if ((await this.streamLeader(stream)) === name) return;
      await nc.request(`$JS.API.STREAM.LEADER.STEPDOWN.${stream}`, "", { timeout: 5000 }).catch(() => {});
      await Bun.sleep(500);
    }
    throw new Error(`${name} did not become leader of ${stream}`);
  }

  /** Each stream's leader (server_name), once each has one. */
  async leaders(streams: readonly string[]): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const stream of streams) out[stream] = await this.streamLeader(stream);
    return out;
  }

  /** Moves the stream's leadership (random new leader each step-down) until `name` does not lead it. */
  async moveLeaderOff(name: string, stream = STREAM, attempts = 20): Promise<string> {
    const { nc } = await this.admin();
    for (let i = 0; i < attempts; i++) {
      const leader = await this.streamLeader(stream);
      if (leader !== name) return leader;
      await nc.request(`$JS.API.STREAM.LEADER.STEPDOWN.${stream}`, "", { timeout: 5000 }).catch(() => {});
      await Bun.sleep(500);
    }
    throw new Error(`${name} still leads ${stream}`);
  }

  /** Waits until every replica of the stream is current (a restarted server caught up). */
  async replicasCurrent(stream = STREAM, want = this.servers.length - 1, timeoutMs = 30_000): Promise<StreamInfo> {
    const deadline = Date.now() + timeoutMs;
    let last: StreamInfo | undefined;
    for (;;) {
      last = await this.streamInfo(stream).catch(() => last);
      const replicas = last?.cluster?.replicas ?? [];
      if (last?.cluster?.leader && replicas.length >= want && replicas.every((r) => r.current && !r.offline))
        return last;
      if (Date.now() > deadline)
        throw new Error(`replicas of ${stream} not current after ${timeoutMs} ms: ${JSON.stringify(last?.cluster)}`);
      await Bun.sleep(250);
    }
  }

  async cleanup(): Promise<void> {
    await this.#admin?.close().catch(() => {});
    await Promise.all(this.servers.map((s) => s.stop()));
    // KEEP_NATS_CLUSTER=1 keeps the servers' logs and stores for a post-mortem.
    if (!process.env.KEEP_NATS_CLUSTER) rmSync(this.dir, { recursive: true, force: true });
    else console.log(`kept ${this.dir}`);
  }
}

/**
 * Every messageId stored for a connection, read back from the stream's message headers (the
 * Tributary-Ids list each message carries), with how many times each is there.
 */
export function storedIds(nc: NatsConnection, connection: string, timeoutMs = 30_000): Promise<Map<string, number>> {
  return storedIdsIn(nc, STREAM, connectionSubjects(connection), timeoutMs);
}

/** Every messageId stored in one stream on subjects matching `subject` (a partition's, say), with how many times each is there. */
export async function storedIdsIn(
  nc: NatsConnection,
  stream: string,
  subject: string,
  timeoutMs = 30_000,
): Promise<Map<string, number>> {
  const jsm = await jetstreamManager(nc, { timeout: 5000, checkAPI: false });
  const info = await jsm.streams.info(stream, { subjects_filter: subject });
  const total = Object.values(info.state.subjects ?? {}).reduce((a, n) => a + (n as number), 0);
  const ids = new Map<string, number>();
  if (total === 0) return ids;
  const js = jetstream(nc, { timeout: 2000 });
  // With a server down, JetStream 2.9 may place the (one-replica) consumer on it: try again.
  let c;
  for (let attempt = 1; ; attempt++) {
    try {
      c = await js.consumers.get(stream, {
        filter_subjects: subject,
        deliver_policy: DeliverPolicy.All,
        headers_only: true,
      });
      break;
    } catch (e) {
      if (attempt >= 10) throw e;
    }
  }
  const messages = await c.consume({ max_messages: 1000 });
  const timer = setTimeout(() => messages.stop(), timeoutMs);
  let seen = 0;
  try {
    for await (const m of messages) {
      for (const id of JSON.parse(m.headers?.get(IDS_HEADER) || "[]") as string[]) ids.set(id, (ids.get(id) ?? 0) + 1);
      seen++;
      // Until the consumer has nothing left, not a count: replicas may number messages differently (see README).
      if (m.info.pending === 0) break;
    }
  } finally {
    clearTimeout(timer);
    messages.stop();
  }
  if (seen < total) throw new Error(`read ${seen} of ${total} messages of ${subject} in ${timeoutMs} ms`);
  return ids;
}
