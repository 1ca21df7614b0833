#!/usr/bin/env bun
/**
 * `npm run stream -- [NAME] [--json]`: what `nats stream info` and `nats consumer report` would
 * say about Tributary's JetStream streams, for those without the NATS CLI: messages, bytes,
 * first/last sequence, subjects, replicas, limits, and per consumer its lag (what a pipeline has
 * not loaded yet, as /v1/pipelines counts it), ack pending, redeliveries and last delivery.
 * Read-only: it creates nothing, so a stream no node created yet is reported as absent.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager, type ConsumerInfo, type JetStreamManager, type StreamInfo } from "@nats-io/jetstream";
import { STREAM } from "../src/bus/subjects.ts";
import { eventStreams, isStreamNotFound } from "../src/bus/connection.ts";
import { DLQ_STREAM } from "../src/bus/dead-letters.ts";
import { fail, parseCommand, unknownName } from "./cli.ts";
import { connectOrExit, natsServers } from "./cli-nats.ts";

/** Every stream a node uses. The KV buckets' names are src/pipeline/users/profiles.ts's (a bucket B is the stream KV_B). */
export const TRIBUTARY_STREAMS = [
  {
    name: STREAM,
    alias: "events",
    about:
      "accepted events, tributary.events.<connection>.<shard>; one durable consumer per pipeline (with TRIBUTARY_STREAM_PARTITIONS=N: TRIBUTARY_EVENTS_P0…, each its own leader)",
  },
  {
    name: DLQ_STREAM,
    alias: "dlq",
    about: "dead letters: rows ClickHouse refused, with the reason (npm run dlq)",
    absent: "created when a node first reaches ClickHouse",
  },
  {
    name: "KV_tributary_identities",
    alias: "identities",
    about: "KV bucket tributary_identities: users pipelines' identity graph",
    absent: "created when a users pipeline first runs",
  },
  {
    name: "KV_tributary_profiles",
    alias: "profiles",
    about: "KV bucket tributary_profiles: users pipelines' merged profiles",
    absent: "created when a users pipeline first runs",
  },
] as const;

const USAGE = `usage: npm run stream -- [NAME] [--json]

Tributary's JetStream streams, straight from NATS ($NATS_URL, default nats://127.0.0.1:4222):
messages, bytes, first and last sequence, subjects, replicas and limits, then each consumer:
its lag (messages not yet delivered plus delivered but not acknowledged: what a pipeline has not
loaded yet, as /v1/pipelines counts it), ack pending, redelivered, last delivery. Creates nothing.

  NAME          one stream, default all of Tributary's:
${TRIBUTARY_STREAMS.map((s) => `                  ${s.alias.padEnd(11)} ${s.name}`).join("\n")}
                or any other stream on the server by its name
      --json    one JSON document per stream
  -h, --help    this help

With the NATS CLI: nats stream info TRIBUTARY_EVENTS; nats consumer report TRIBUTARY_EVENTS.`;

// ---- the report ----------------------------------------------------------------------------

export interface ConsumerReport {
  name: string;
  /** False for an ephemeral consumer (a node re-reading a shard, a replay, a dlq listing). */
  durable: boolean;
  filter: string[];
  /** pending + ackPending. */
  lag: number;
  /** Messages not delivered yet. */
  pending: number;
  /** Delivered, not acknowledged yet. */
  ackPending: number;
  redelivered: number;
  /** The stream sequence of the last message delivered, and when (null: nothing yet). */
  lastDelivered: { seq: number; at: string | null };
  /** Every message up to this stream sequence is acknowledged. */
  ackFloor: number;
  paused: boolean;
}

export interface StreamReport {
  stream: string;
  about?: string;
  exists: boolean;
  /** Why a Tributary stream may not exist yet. */
  absent?: string;
  subjects?: string[];
  replicas?: number;
  /** The cluster's leader and replicas, when NATS runs clustered. */
  cluster?: { leader?: string; replicas: { name: string; current: boolean; lag?: number }[] };
  messages?: number;
  bytes?: number;
  /** Distinct subjects holding messages. */
  subjectsHoldingMessages?: number;
  first?: { seq: number; at: string | null };
  last?: { seq: number; at: string | null };
  limits?: {
    maxAgeSeconds: number | null;
    maxBytes: number | null;
    maxMessages: number | null;
    maxMessageSize: number | null;
    discard: string;
    duplicateWindowSeconds: number | null;
    storage: string;
    retention: string;
  };
  consumers?: ConsumerReport[];
}

const limit = (n: number | undefined) => (n === undefined || n <= 0 ? null : n);
const seconds = (nanos: number | undefined) => (nanos ? nanos / 1e9 : null);
/** NATS answers 0001-01-01T00:00:00Z for "never". */
const time = (iso: unknown) => (typeof iso !== "string" || !iso || iso.startsWith("0001-") ? null : iso);

export function consumerReport(c: ConsumerInfo): ConsumerReport {
  const filter = c.config.filter_subjects ?? (c.config.filter_subject ? [c.config.filter_subject] : []);
  return {
    name: c.name,
    durable: !!c.config.durable_name,
    filter,
    lag: c.num_pending + c.num_ack_pending,
    pending: c.num_pending,
    ackPending: c.num_ack_pending,
    redelivered: c.num_redelivered,
    lastDelivered: { seq: c.delivered?.stream_seq ?? 0, at: time(c.delivered?.last_active) },
    ackFloor: c.ack_floor?.stream_seq ?? 0,
    paused: !!c.paused,
  };
}

export function streamReport(info: StreamInfo, consumers: ConsumerInfo[]): StreamReport {
  const c = info.config;
  const s = info.state;
  const known = TRIBUTARY_STREAMS.find((x) => x.name === c.name);
  return {
    stream: c.name,
    about: known?.about,
    exists: true,
    subjects: c.subjects ?? [],
    replicas: c.num_replicas || 1,
    cluster: info.cluster?.leader
      ? {
          leader: info.cluster.leader,
          replicas: (info.cluster.replicas ?? []).map((r) => ({ name: r.name, current: r.current, lag: r.lag })),
        }
      : undefined,
    messages: s.messages,
    bytes: s.bytes,
    subjectsHoldingMessages: s.num_subjects ?? 0,
    first: { seq: s.first_seq, at: s.messages ? time(s.first_ts) : null },
    last: { seq: s.last_seq, at: time(s.last_ts) },
    limits: {
      maxAgeSeconds: seconds(c.max_age),
      maxBytes: limit(c.max_bytes),
      maxMessages: limit(c.max_msgs),
      maxMessageSize: limit(c.max_msg_size),
      discard: String(c.discard),
      duplicateWindowSeconds: seconds(c.duplicate_window),
      storage: String(c.storage),
      retention: String(c.retention),
    },
    consumers: consumers
      .map(consumerReport)
      .sort((a, b) => Number(b.durable) - Number(a.durable) || a.name.localeCompare(b.name)),
  };
}

export async function readStream(jsm: JetStreamManager, name: string): Promise<StreamReport | undefined> {
  let info: StreamInfo;
  try {
    info = await jsm.streams.info(name);
  } catch (e) {
    if (isStreamNotFound(e)) return undefined;
    throw e;
  }
  const consumers: ConsumerInfo[] = [];
  for await (const c of jsm.consumers.list(name)) consumers.push(c);
  return streamReport(info, consumers);
}

// ---- formatting ----------------------------------------------------------------------------

const count = (n: number) => n.toLocaleString("en-US");

export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) (v /= 1024), u++;
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

export function duration(s: number | null): string {
  if (s === null) return "unlimited";
  for (const [unit, n] of [
    ["d", 86400],
    ["h", 3600],
    ["m", 60],
  ] as const)
    if (s >= n && s % n === 0) return `${s / n}${unit}`;
  return `${s}s`;
}

function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) =>
    r
      .map((cell, i) => (i === r.length - 1 ? cell : i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
      .join("  "),
  );
}

export function formatStream(r: StreamReport): string {
  if (!r.exists)
    return `${r.stream}${r.about ? ` — ${r.about}` : ""}\n  not created yet${r.absent ? ` (${r.absent})` : ""}\n`;
  const l = r.limits!;
  const lines = [
    `${r.stream}${r.about ? ` — ${r.about}` : ""}`,
    `  subjects     ${r.subjects!.join(", ")}  (${count(r.subjectsHoldingMessages!)} holding messages)`,
    `  messages     ${count(r.messages!)}  (${bytes(r.bytes!)}${r.messages ? `, ${bytes(Math.round(r.bytes! / r.messages))} per message` : ""})`,
    `  first        ${r.messages ? `#${r.first!.seq}  ${r.first!.at ?? ""}` : "-"}`,
    `  last         #${r.last!.seq}${r.last!.at ? `  ${r.last!.at}` : ""}`,
    `  replicas     ${r.replicas}${r.cluster ? `  (leader ${r.cluster.leader}${r.cluster.replicas.map((x) => `, ${x.name}${x.current ? "" : ` behind by ${x.lag ?? "?"}`}`).join("")})` : ""}`,
    `  limits       max age ${duration(l.maxAgeSeconds)}, max bytes ${l.maxBytes === null ? "unlimited" : bytes(l.maxBytes)}, max messages ${l.maxMessages === null ? "unlimited" : count(l.maxMessages)}, ` +
      `max message size ${l.maxMessageSize === null ? "unlimited" : bytes(l.maxMessageSize)}, discard ${l.discard}, duplicate window ${l.duplicateWindowSeconds === null ? "none" : duration(l.duplicateWindowSeconds)}, ${l.storage} storage`,
  ];
  const cs = r.consumers!;
  if (!cs.length) lines.push("  consumers    none");
  else {
    lines.push(`  consumers    ${cs.length}`);
    const rows = [["NAME", "LAG", "PENDING", "ACK PENDING", "REDELIVERED", "ACK FLOOR", "LAST DELIVERY"]];
    for (const c of cs) {
      rows.push([
        `${c.name}${c.durable ? "" : " (ephemeral)"}${c.paused ? " (paused)" : ""}`,
        count(c.lag),
        count(c.pending),
        count(c.ackPending),
        count(c.redelivered),
        `#${c.ackFloor}`,
        c.lastDelivered.at ? `#${c.lastDelivered.seq}  ${c.lastDelivered.at}` : "never",
      ]);
    }
    for (const line of table(rows)) lines.push(`    ${line}`);
  }
  return `${lines.join("\n")}\n`;
}

// ---- the command ---------------------------------------------------------------------------

async function main() {
  const { values, positionals } = parseCommand({
    name: "stream",
    usage: USAGE,
    options: { json: { type: "boolean", default: false } },
    positionals: { max: 1 },
  });
  const asked = positionals[0];
  const nc: NatsConnection = await connectOrExit("stream");
  try {
    const jsm = await jetstreamManager(nc, { timeout: 5000 }).catch((e) =>
      fail("stream", `JetStream does not answer at ${natsServers()}: ${(e as Error).message}`),
    );
    let names: string[] = TRIBUTARY_STREAMS.map((s) => s.name);
    if (asked !== undefined) {
      const known = TRIBUTARY_STREAMS.find((s) => s.alias === asked.toLowerCase() || s.name === asked);
      if (known) names = [known.name];
      else if (
        await jsm.streams.info(asked).then(
          () => true,
          () => false,
        )
      )
        names = [asked];
      else {
        const others: string[] = [];
        for await (const n of jsm.streams.names()) others.push(n);
        fail(
          "stream",
          unknownName("stream", asked, [...TRIBUTARY_STREAMS.flatMap((s) => [s.alias, s.name]), ...others], {
            where: `on ${natsServers()}`,
          }),
        );
      }
    }
    // The events stream is one per partition when the deployment has several.
    const events = await eventStreams(jsm);
    if (events.length && !events.includes(STREAM)) names = names.flatMap((n) => (n === STREAM ? events : [n]));
    for (const name of names) {
      const known = TRIBUTARY_STREAMS.find((s) => s.name === name);
      const r: StreamReport = (await readStream(jsm, name)) ?? {
        stream: name,
        about: known?.about,
        exists: false,
        absent: known && "absent" in known ? known.absent : undefined,
      };
      process.stdout.write(values.json ? `${JSON.stringify(r)}\n` : `${formatStream(r)}\n`);
    }
  } finally {
    await nc.close();
  }
}

if (import.meta.main) await main();
