// What the bench reads from JetStream and the servers' monitoring port: each events stream's
// writes in the window (last_seq and bytes before and after), who leads each stream and each
// pipeline consumer, the pipelines' backlog, and each server's traffic (varz).
import type { JetStreamManager } from "@nats-io/jetstream";

export interface StreamState {
  name: string;
  lastSeq: number;
  bytes: number;
  messages: number;
  leader: string;
}

export async function streamStates(jsm: JetStreamManager, names: readonly string[]): Promise<StreamState[]> {
  return Promise.all(
    names.map(async (name) => {
      const i = await jsm.streams.info(name);
      return {
        name,
        lastSeq: i.state.last_seq,
        bytes: i.state.bytes,
        messages: i.state.messages,
        leader: i.cluster?.leader ?? "",
      };
    }),
  );
}

export interface StreamWrites {
  name: string;
  /** Messages and bytes stored in the window (bytes: per replica, JetStream's accounting). */
  messages: number;
  bytes: number;
  /** The leader at the start and at the end (they differ if leadership moved). */
  leader: string;
  leaderAtEnd: string;
  /** Of all events streams' writes in the window. */
  messageShare: number;
  byteShare: number;
}

export function writesBetween(before: StreamState[], after: StreamState[]): StreamWrites[] {
  const rows = after.map((a, i) => ({
    name: a.name,
    messages: a.lastSeq - before[i]!.lastSeq,
    bytes: a.bytes - before[i]!.bytes,
    leader: before[i]!.leader,
    leaderAtEnd: a.leader,
  }));
  const m = rows.reduce((s, r) => s + r.messages, 0);
  const b = rows.reduce((s, r) => s + r.bytes, 0);
  return rows.map((r) => ({ ...r, messageShare: r.messages / Math.max(1, m), byteShare: r.bytes / Math.max(1, b) }));
}

/** Leader of each consumer on the streams, and the backlog summed over them. */
export async function consumers(
  jsm: JetStreamManager,
  streams: readonly string[],
): Promise<{ leaders: { stream: string; name: string; leader: string }[]; backlog: number }> {
  const leaders: { stream: string; name: string; leader: string }[] = [];
  let backlog = 0;
  for (const stream of streams) {
    for await (const c of jsm.consumers.list(stream)) {
      leaders.push({ stream, name: c.name, leader: c.cluster?.leader ?? "" });
      backlog += c.num_pending + c.num_ack_pending;
    }
  }
  return { leaders, backlog };
}

export interface Varz {
  inMsgs: number;
  outMsgs: number;
  inBytes: number;
  outBytes: number;
}

/** A server's message counters (clients and routes together), from its monitoring port. */
export async function varz(monitorPort: number): Promise<Varz | undefined> {
  try {
    const v = (await (await fetch(`http://127.0.0.1:${monitorPort}/varz`)).json()) as Record<string, number>;
    return { inMsgs: v.in_msgs!, outMsgs: v.out_msgs!, inBytes: v.in_bytes!, outBytes: v.out_bytes! };
  } catch {
    return undefined;
  }
}

export const varzDelta = (a: Varz | undefined, b: Varz | undefined): Varz | undefined =>
  a && b
    ? {
        inMsgs: b.inMsgs - a.inMsgs,
        outMsgs: b.outMsgs - a.outMsgs,
        inBytes: b.inBytes - a.inBytes,
        outBytes: b.outBytes - a.outBytes,
      }
    : undefined;

/** Bytes a server exchanged with its clients (by connection id), to tell client traffic from replication. */
export async function clientBytes(monitorPort: number): Promise<Map<number, { in: number; out: number }> | undefined> {
  try {
    const c = (await (await fetch(`http://127.0.0.1:${monitorPort}/connz?limit=100000`)).json()) as {
      connections?: { cid: number; in_bytes: number; out_bytes: number }[];
    };
    return new Map((c.connections ?? []).map((x) => [x.cid, { in: x.in_bytes, out: x.out_bytes }]));
  } catch {
    return undefined;
  }
}

/** Client bytes in the window: connections open at the end, less what they had at the start. */
export function clientDelta(
  a: Map<number, { in: number; out: number }> | undefined,
  b: Map<number, { in: number; out: number }> | undefined,
): { in: number; out: number } | undefined {
  if (!a || !b) return undefined;
  let i = 0;
  let o = 0;
  for (const [cid, x] of b) {
    i += x.in - (a.get(cid)?.in ?? 0);
    o += x.out - (a.get(cid)?.out ?? 0);
  }
  return { in: i, out: o };
}
